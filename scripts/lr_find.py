"""python scripts/lr_find.py --arch efficientnetv2_s --fold 0   (same as `seti-fastai lr-find ...`)"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seti_fastai.cli import run_command

if __name__ == "__main__":
    run_command("lr-find")
