"""Data: corpus sources, audio decoding, the synthetic corpus, splits, features and model inputs."""

# torchvision's ImageNet statistics, applied at load time (data/inputs.py; the original's dataset
# did this). Here, not in inputs.py, so that validating params (config) imports no torch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
