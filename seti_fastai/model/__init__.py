"""timm backbones, resizers and the classifier head's loss."""
