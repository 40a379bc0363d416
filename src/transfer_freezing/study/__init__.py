"""Study: the comparison of runs, its statistics, figures and reports, and the MLflow UI."""
