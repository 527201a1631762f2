"""python scripts/predict.py runs/exp/fold0 runs/exp/fold1 --data data --tta flips   (= `seti-fastai predict ...`)"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seti_fastai.cli import run_command

if __name__ == "__main__":
    run_command("predict")
