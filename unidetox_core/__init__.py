"""UniDetox, reproduced and taught: a thin core of plain functions.

One module per pipeline stage (see ARCHITECTURE in the README):

- ``profiles``  paper / mini / tiny settings as plain values
- ``cache``     configuration keys and atomic writes
- ``data``      sources, fetching from originals or a mirror, tidy loaders
- ``models``    loading any causal LM, building small ones, training tokenizers
- ``finetune``  causal-LM fine-tuning (toxic model, detox fine-tuning)
- ``distill``   contrastive decoding (Eq. 1-3) and plain sampling
- ``generate``  continuations for evaluation (nucleus sampling, batched)
- ``scorers``   toxicity and political-bias scorers
- ``metrics``   TP, EMT, perplexity, Dist-n, MMLU
- ``baselines`` pre-prompts, LM-Steer, DExperts, Task Arithmetic, tuning rule
- ``world``     the miniature world (mini profile)
- ``analysis``  TF-IDF, Jaccard, political leaning, gradient alignment
"""

__version__ = "0.1.0"
