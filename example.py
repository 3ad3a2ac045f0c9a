"""The reference implementation's entry point (yuranusduke/Shift_and_Balance_Attention), kept so that its
command works verbatim:

    python example.py main --device='cuda' --attn_ratio=0.5 --use_sb=True --use_se=False --activation='tanh' \
        --epochs=80 --batch_size=64 --init_lr=0.1 --gamma=0.2 --milestones=[40,60,80] --weight_decay=9e-6

`main` with any of those flags (the rest take the reference's defaults) runs `sbattn train` with the same flags,
in the reference's arithmetic unless told otherwise: fp32, its random draws and Pillow augmentation
(--rng reference), its figures beside the exact ones (docs/reference-mode.md). `sbattn train` keeps the fast
defaults (--precision auto --rng sbattn).
"""
import sys

from sbattn.cli import main

REFERENCE_ARITHMETIC = {"precision": "fp32", "rng": "reference"}

if __name__ == "__main__":
    if sys.argv[1:2] != ["main"]:
        sys.exit("usage: python example.py main [--flag=value ...]  (the same flags as `sbattn train --help`)")
    sys.exit(main(["train", *sys.argv[2:]], defaults=REFERENCE_ARITHMETIC))
