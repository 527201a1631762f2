"""python scripts/train.py --arch efficientnetv2_m --fold 2   (same as `seti-fastai train ...`)"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seti_fastai.cli import run_command

if __name__ == "__main__":
    run_command("train")
