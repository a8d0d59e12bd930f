"""Fine-tune MiniLM on imbalanced movie reviews with cross-entropy and with a loss for imbalance; compare.

    accelerate launch examples/text_classification/train.py                       # CE vs class-weighted CE
    accelerate launch examples/text_classification/train.py --loss_type focal --loss_kwargs '{"gamma": 2.0}'
    accelerate launch examples/text_classification/train.py --loss_type focal --tune_trials 8
    python examples/text_classification/train.py --max_train_samples 64 --max_steps 2   # smoke test

Writes <output_dir>/results.md (accuracy, macro-F1, minority recall per loss; also printed),
<output_dir>/loss_curves.png and one trained model per loss (with loss_config.json and a model card).

This file is the same program as ``hf-losses demo``: the code lives in hf_losses/cli/demo.py so that the demo
also runs from an installed package. Read that module for the data, the model and the metrics.
"""

from hf_losses.cli.demo import run_demo
from hf_losses.distributed import shut_down

if __name__ == "__main__":
    run_demo()
    shut_down()
