"""What the interoperability tests of the reference's pipeline share: its dataset, restated."""
import torch
from PIL import Image


class InMemory(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 gives: a PIL image from a uint8 HWC array, transformed, and its label."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
