"""AsymSegTrainer: the engine of AsymSeg.

Asymmetric large-margin loss, focal loss, adversarial training, mixup and augmentation
that push only the rare classes away from the decision boundary, after Z. Li,
K. Kamnitsas, B. Glocker, "Analyzing Overfitting under Class Imbalance in Neural Networks
for Image Segmentation", IEEE TMI 2020. Never imports Slicer.

Submodules: ``losses``, ``regularizers``, ``metrics``, ``logits`` (the method library);
the training engine, inference and CLI build on them.
"""

__version__ = "0.1.0"
