"""Fine-tune an hf_centered model: `python finetune.py [--config configs/<name>.yaml] [--field value ...]`.

The logic lives in `hf_centered.finetuning`; see its docstring and `configs/` for the options.
"""

from hf_centered.finetuning import main

if __name__ == "__main__":
    main()
