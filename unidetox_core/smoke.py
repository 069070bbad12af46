"""Stand-ins for the hubs, so the paper profile's code runs end to end here, on a CPU, in minutes.

The ``smoke`` profile is the ``paper`` profile -- the same hub ids, data sets, scorers, settings and
branches -- with the sizes of the ``tiny`` one (``smoke-small`` does the same for the ``small``
profile). What it reads comes from a folder laid out as the caches a machine with a network would
hold after a paper run:

- ``hf/hub/models--org--name/snapshots/<commit>/``: for every model id of the profiles, a *tiny*
  model of the real architecture class (GPT-2, OPT, Falcon, LLaMA; their configurations from
  ``plan.ARCHITECTURES``, only narrower and shallower), randomly initialised, with a tokenizer of the
  real scheme (byte-level BPE for GPT-2, OPT, Falcon and SmolLM2, with their special tokens and
  OPT's and LLaMA's automatic start token; a SentencePiece model for LLaMA-2), written by
  ``save_pretrained``; ``bert-base-uncased``/``bert-base-cased`` and PoliticalBiasBERT as tiny BERTs;
- ``hf/datasets/``: DGHS, ToxiGen ``annotated`` and ``cais/mmlu`` ``all`` in their hub schemas
  (``HUB_FEATURES``, from the dataset cards), as ``datasets`` caches a prepared data set -- rows made
  from the mirrored public data (Davidson tweets as DGHS entries, ToxiGen seed sentences with ratings,
  real MMLU questions);
- ``torch/hub/checkpoints/toxic_original-c1212f89.ckpt``: a Detoxify checkpoint in its release
  format (config + state dict of a tiny ``BertForSequenceClassification``).

``environment(root)`` points ``HF_HOME`` and ``TORCH_HOME`` there and sets ``HF_HUB_OFFLINE``: the
loaders (``transformers``, ``datasets``, ``detoxify``, this project's preflight) then find
everything where a copied cache would be, through their own code. The numbers of a smoke run mean
nothing -- the models are random -- it checks that the paper's code path runs.

    python -m unidetox_core.smoke build            # into cache/smoke/hubs (what make world PROFILE=smoke does)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import data
from .cache import atomic_path

SMOKE_PROFILES = ("smoke", "smoke-small")
DETOXIFY_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
BUILD_VERSION = 2  # bump when a stand-in changes, so an old folder is rebuilt


# ------------------------------------------------------------------------------------ environment
def environment(root: str | os.PathLike) -> dict[str, str]:
    """The variables under which every hub read goes to the stand-ins in ``root`` and nothing else."""
    root = Path(root).resolve()
    return {"HF_HOME": str(root / "hf"), "TORCH_HOME": str(root / "torch"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def stand_ins_dir(values: dict, root: str | os.PathLike = ".") -> Path | None:
    """The stand-ins folder a profile reads instead of the hubs (``hub_stand_ins``; relative paths from
    ``root``, the repository), or ``None``."""
    folder = values.get("hub_stand_ins") or ""
    if not folder:
        return None
    return Path(root) / folder.format(cache_dir=values.get("cache_dir", "cache"))


def activate(values: dict, root: str | os.PathLike = ".") -> dict[str, str]:
    """Set ``environment`` for this process and its children when profile ``values`` reads stand-ins;
    returns the variables set (none for the other profiles). Call it before ``transformers``,
    ``datasets`` or ``huggingface_hub`` is imported: they read these variables once, at import."""
    root = stand_ins_dir(values, root)
    if root is None:
        return {}
    if not is_built(root):
        raise FileNotFoundError(f"hub_stand_ins={str(root)!r} holds no stand-ins for the {values.get('profile')!r} "
                                f"profile; build them first: make world PROFILE={values.get('profile')} "
                                f"(python -m unidetox_core.smoke build --root {root}).")
    env = environment(root)
    os.environ.update(env)
    return env


def is_built(root: str | os.PathLike) -> bool:
    stamp = Path(root) / "built.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("version") == BUILD_VERSION


# ------------------------------------------------------------------------------------------ models
# The model ids the stand-ins cover: every model of the paper and small profiles, and the bases of
# the two BERT scorers. Each maps to (tokenizer scheme, width, layers, heads, key/value heads).
TOKENIZER_OF = {
    "openai-community/gpt2-xl": "gpt2", "openai-community/gpt2": "gpt2", "openai-community/gpt2-large": "gpt2",
    "facebook/opt-6.7b": "opt", "facebook/opt-125m": "opt", "tiiuae/falcon-7b": "falcon",
    "meta-llama/Llama-2-7b-hf": "llama", "HuggingFaceTB/SmolLM2-135M": "smollm",
}
BERTS = {"bert-base-uncased": True, "bert-base-cased": False}  # id -> lower-cases
POLITICAL_BIAS_BERT = "bucketresearch/politicalBiasBERT"
TINY = dict(width=64, layers=2, heads=4)


def tiny_config(repo: str, tokenizer):
    """The configuration of ``repo`` (``plan.ARCHITECTURES``) with its width, depth and vocabulary
    cut to the stand-in's; every other field -- Falcon's multi-query attention, LLaMA's grouped
    key/value heads, tied or untied embeddings, the number of positions -- as the real model has it."""
    import transformers

    from .plan import ARCHITECTURES

    config_class, values = ARCHITECTURES[repo]
    values = dict(values)
    width, layers, heads = TINY["width"], TINY["layers"], TINY["heads"]
    if config_class == "GPT2Config":
        values.update(n_embd=width, n_layer=layers, n_head=heads)
    elif config_class == "OPTConfig":
        values.update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=4 * width,
                      word_embed_proj_dim=width)
    elif config_class == "FalconConfig":
        values.update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads)
    elif config_class == "LlamaConfig":
        grouped = values["num_key_value_heads"] < values["num_attention_heads"]
        values.update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads // 2 if grouped else heads, intermediate_size=3 * width)
    else:
        raise ValueError(f"no stand-in for {repo!r} ({config_class})")
    values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    return getattr(transformers, config_class)(**values)


def tokenizer_texts(n_tweets: int = 3000) -> list[str]:
    """Texts to train the stand-ins' tokenizers on: tweets, ToxiGen sentences, MMLU questions (mirror)."""
    tweets = data.load_tweets()["text"].sample(n_tweets, random_state=0).tolist()
    prompts = data.load_toxigen_seed_prompts()["text"].tolist()
    mmlu = data.load_mmlu("dev")
    questions = (mmlu["question"] + " " + mmlu["choices"].map(" ".join)).tolist()
    return tweets + prompts + questions


def build_tokenizer(scheme: str, texts: list[str], vocab_size: int = 1000):
    """A ``transformers`` tokenizer of the real model's scheme, trained on ``texts``.

    ``gpt2``: byte-level BPE, ``<|endoftext|>`` as BOS/EOS/UNK, no start token added. ``opt``: the
    same scheme, OPT's ``<s> <pad> </s> <unk>``, ``</s>`` put before every text. ``falcon``: byte-level
    BPE with an EOS only. ``smollm``: byte-level BPE, ``<|endoftext|>`` plus chat markers. ``llama``: a
    SentencePiece model (``<unk> <s> </s>``, no pad) that puts ``<s>`` before every text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .models import sentencepiece_unigram

    specials = {
        "gpt2": (["<|endoftext|>"], dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")),
        "opt": (["<s>", "<pad>", "</s>", "<unk>"], dict(bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")),
        "falcon": ([">>TITLE<<", ">>ABSTRACT<<", "<|endoftext|>"], dict(eos_token="<|endoftext|>")),
        "smollm": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                                                         unk_token="<|endoftext|>")),
        "llama": (["<unk>", "<s>", "</s>"], dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")),
    }
    if scheme not in specials:
        raise ValueError(f"scheme={scheme!r}; use one of {sorted(specials)}.")
    tokens, named = specials[scheme]
    if scheme == "llama":
        tok = Tokenizer(models.Unigram(sentencepiece_unigram(texts, vocab_size, tokens), unk_id=0))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.add_special_tokens(tokens)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
    start = {"opt": "</s>", "llama": "<s>"}.get(scheme)
    if start:  # OPT's and LLaMA's tokenizers put their start token before every text
        tok.post_processor = processors.TemplateProcessing(single=f"{start} $A", pair=f"{start} $A {start} $B",
                                                           special_tokens=[(start, tok.token_to_id(start))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def build_bert_tokenizer(texts: list[str], lowercase: bool, folder: Path, vocab_size: int = 1000):
    """A BERT WordPiece tokenizer (``vocab.txt``, as ``bert-base-uncased``/``-cased`` ship it)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=lowercase)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece.save_model(str(folder))
    # from the folder, as BERT's tokenizer is loaded everywhere (the constructor's vocabulary argument
    # was renamed between transformers 4 and 5)
    # 512 positions, as the real BERT tokenizers declare (Detoxify truncates to it)
    return BertTokenizer.from_pretrained(str(folder), do_lower_case=lowercase, model_max_length=512)


def snapshot_dir(root: Path, repo: str, kind: str = "model") -> Path:
    """``<HF_HOME>/hub/<kind>s--org--name/snapshots/<commit>``, with ``refs/main`` naming that commit,
    as ``huggingface_hub`` lays out a downloaded repository."""
    repo_dir = root / "hf" / "hub" / f"{kind}s--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"stand-in {repo} {BUILD_VERSION}".encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir / "snapshots" / commit


def build_models(root: Path, texts: list[str], seed: int = 0) -> list[str]:
    """Every causal LM stand-in (``TOKENIZER_OF``), tokenizers shared within a scheme."""
    import torch
    from transformers import AutoModelForCausalLM

    built, tokenizers = [], {}
    for repo, scheme in TOKENIZER_OF.items():
        tokenizer = tokenizers.setdefault(scheme, build_tokenizer(scheme, texts))
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(repo, tokenizer))
        with atomic_path(snapshot_dir(root, repo)) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        built.append(repo)
    return built


def centred(model, tokenizer, texts: list[str]):
    """``model`` with its heads' biases shifted so that half of ``texts`` score above 0.5 on each: the
    shares of toxic continuations then lie away from 0 and 1."""
    import torch

    with torch.no_grad():
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
        logits = model.eval()(**batch).logits
        model.classifier.bias -= logits.median(dim=0).values
    return model


def build_scorers(root: Path, texts: list[str], seed: int = 0) -> list[str]:
    """The BERT tokenizers, PoliticalBiasBERT (3 labels) and the Detoxify checkpoint (6 heads). Their
    weights are drawn wide (``initializer_range`` 0.5): at BERT's 0.02 a tiny random BERT gives every
    text the same score to five digits, and a few hundred training steps barely move it (tried: AUC
    0.57 on Davidson tweets after 200 steps), while wide weights give scores that vary from text to
    text on both sides of 0.5 -- what the evaluation's thresholds and statistics need to be exercised."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    def bert(tokenizer, n_labels: int, **labels) -> BertForSequenceClassification:
        torch.manual_seed(seed)
        return BertForSequenceClassification(BertConfig(
            vocab_size=len(tokenizer), hidden_size=TINY["width"], num_hidden_layers=TINY["layers"],
            num_attention_heads=TINY["heads"], intermediate_size=4 * TINY["width"], num_labels=n_labels,
            initializer_range=0.5, **labels))

    tokenizers = {}
    for repo, lowercase in BERTS.items():
        folder = snapshot_dir(root, repo)
        with atomic_path(folder) as tmp:
            tokenizers[repo] = build_bert_tokenizer(texts, lowercase, Path(tmp))
            bert(tokenizers[repo], 2).config.save_pretrained(tmp)  # the base model's config, which Detoxify reads
            tokenizers[repo].save_pretrained(tmp)
    bias = bert(tokenizers["bert-base-cased"], 3, id2label={0: "left", 1: "center", 2: "right"},
                label2id={"left": 0, "center": 1, "right": 2})
    with atomic_path(snapshot_dir(root, POLITICAL_BIAS_BERT)) as tmp:  # its card loads bert-base-cased's tokenizer
        bias.save_pretrained(tmp)
    from .scorers import DETOXIFY_CHECKPOINTS

    checkpoint = root / "torch" / "hub" / "checkpoints" / DETOXIFY_CHECKPOINTS["original"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    toxicity = centred(bert(tokenizers["bert-base-uncased"], len(DETOXIFY_CLASSES)), tokenizers["bert-base-uncased"],
                       data.load_tweets()["text"].sample(500, random_state=seed).tolist())
    release = {  # the layout of Detoxify's GitHub release: the training config and the state dict
        "config": {"arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                                     "tokenizer_name": "BertTokenizer", "num_classes": len(DETOXIFY_CLASSES)}},
                   "dataset": {"args": {"classes": DETOXIFY_CLASSES}}},
        "state_dict": toxicity.state_dict(),
    }
    with atomic_path(checkpoint) as tmp:
        torch.save(release, tmp)
    return [*BERTS, POLITICAL_BIAS_BERT, "detoxify:original"]


# -------------------------------------------------------------------------------------- data sets
def hub_features() -> dict:
    """The features of the three hub data sets (their dataset cards), as ``datasets.Features``."""
    import datasets

    text = datasets.Value("string")
    dghs = ["acl.id", "text", "label", "type", "target", "level", "split", "round", "annotator", "acl.id.matched"]
    toxigen = ["text", "target_group", "factual?", "ingroup_effect", "lewd", "framing", "predicted_group",
               "stereotyping", "predicted_author", "actual_method"]
    return {
        "dghs": datasets.Features({**{c: text for c in dghs}, "round.base": datasets.Value("int64")}),
        "toxigen_annotated": datasets.Features({**{c: text for c in toxigen},
                                                **{c: datasets.Value("float64") for c in ("intent", "toxicity_ai", "toxicity_human")}}),
        "mmlu": datasets.Features({"question": text, "subject": text, "choices": datasets.Sequence(text),
                                   "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])}),
    }


def dghs_rows(n: int = 600, seed: int = 0) -> dict[str, pd.DataFrame]:
    """DGHS-shaped rows from Davidson tweets: hate/offensive ones as ``hate`` with one of the 34
    targets, the others ``nothate``; DGHS's one table, with its ``split`` column."""
    tweets = data.load_tweets().sample(n, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    hate = tweets["toxic"].to_numpy()
    frame = pd.DataFrame({
        "acl.id": [f"acl{i}" for i in range(n)], "text": tweets["text"], "label": np.where(hate, "hate", "nothate"),
        "type": np.where(hate, "derogation", "none"),
        "target": np.where(hate, rng.choice(data.DGHS_TARGETS, n), "none"), "level": "original",
        "split": rng.choice(["train", "dev", "test"], n, p=[0.8, 0.1, 0.1]), "round": "1",
        "annotator": "stand-in", "acl.id.matched": [f"acl{i}" for i in range(n)], "round.base": 1,
    })
    return {"train": frame}


def toxigen_rows(seed: int = 0) -> dict[str, pd.DataFrame]:
    """ToxiGen ``annotated``-shaped rows from the seed sentences: their group as ``target_group``,
    ratings 1-5 that put ``hate`` sentences above the 5.5 sum and ``neutral`` ones below it."""
    prompts = data.load_toxigen_seed_prompts()
    # The seed files' groups as the hub names them; a group the hub lacks (immigrant) is kept, and the
    # filter of Appendix B.1 drops it as it would.
    hub_group = {"mental_disability": "mental_dis", "physical_disability": "physical_dis",
                 "bisexual": "lgbtq+ folks", "trans": "lgbtq+ folks"}
    rng = np.random.default_rng(seed)
    hate = prompts["label"].eq("hate").to_numpy()
    ratings = np.where(hate, rng.uniform(3.5, 5.0, len(prompts)), rng.uniform(1.0, 2.5, len(prompts)))
    frame = pd.DataFrame({
        "text": prompts["text"], "target_group": prompts["group"].map(lambda g: hub_group.get(g, g)),
        "factual?": "neither factual nor opinion", "ingroup_effect": "doesn't use in-group language",
        "lewd": "doesn't contain lewd content", "framing": "disagreement", "predicted_group": "",
        "stereotyping": "doesn't use positive stereotyping", "predicted_author": "human", "actual_method": "topk",
        "intent": ratings.round(2), "toxicity_ai": ratings.round(2), "toxicity_human": ratings.round(2),
    })
    test = prompts["split"].eq("test").to_numpy()
    return {"train": frame[~test].reset_index(drop=True), "test": frame[test].reset_index(drop=True)}


def mmlu_rows() -> dict[str, pd.DataFrame]:
    """MMLU ``all``: the real questions (mirror), the answer as the hub's class label 0-3."""
    return {split: data.load_mmlu(mirror_split)[["question", "subject", "choices", "answer"]]
            for split, mirror_split in (("test", "test"), ("dev", "dev"), ("validation", "dev"))}


def write_dataset_cache(root: Path, name: str, splits: dict[str, pd.DataFrame], features) -> Path:
    """The hub data set ``name`` of ``sources.yml`` as ``datasets`` keeps a prepared data set:
    ``<HF_HOME>/datasets/<org>___<name>/<config>/0.0.0/<hash>/`` with ``dataset_info.json`` and one
    Arrow file per split -- where ``load_dataset(repo, config)`` looks when the hub is offline."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase, filenames_for_dataset_split

    entry = data.load_hub_sources()[name]
    org, repo_name = entry["repo"].split("/")
    dataset_name = camelcase_to_snakecase(repo_name)
    config = entry["config"] or "default"
    folder = (root / "hf" / "datasets" / f"{org}___{dataset_name}" / config / "0.0.0" /
              hashlib.sha1(f"{entry['repo']} {entry['revision']}".encode()).hexdigest()[:16])
    split_dict = datasets.SplitDict(dataset_name=dataset_name)
    with atomic_path(folder) as tmp:
        Path(tmp).mkdir(parents=True)
        for split, frame in splits.items():
            table = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False).data.table
            (path,) = filenames_for_dataset_split(tmp, dataset_name, split, "arrow", None)
            with ArrowWriter(path=path, features=features) as writer:
                writer.write_table(table)
                writer.finalize()
            split_dict.add(datasets.SplitInfo(name=split, num_examples=len(frame), dataset_name=dataset_name))
        datasets.DatasetInfo(features=features, config_name=config, dataset_name=dataset_name, splits=split_dict,
                             builder_name=dataset_name, version="0.0.0").write_to_directory(tmp)
    return folder


def build_data(root: Path) -> list[str]:
    features = hub_features()
    write_dataset_cache(root, "dghs", dghs_rows(), features["dghs"])
    write_dataset_cache(root, "toxigen_annotated", toxigen_rows(), features["toxigen_annotated"])
    write_dataset_cache(root, "mmlu", mmlu_rows(), features["mmlu"])
    return ["dghs", "toxigen_annotated", "mmlu"]


# ------------------------------------------------------------------------------------------- build
def build(root: str | os.PathLike, force: bool = False) -> Path:
    """Build every stand-in into ``root`` (about a minute on a CPU); kept when already built."""
    root = Path(root)
    if is_built(root) and not force:
        return root
    texts = tokenizer_texts()
    made = {"models": build_models(root, texts), "scorers": build_scorers(root, texts), "data sets": build_data(root)}
    (root / "built.json").write_text(json.dumps({"version": BUILD_VERSION, **made}, indent=1))
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m unidetox_core.smoke build [--root DIR] [--force]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unidetox_core.smoke", description=main.__doc__)
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--root", default=None, help="where (default: the smoke profile's hub_stand_ins)")
    parser.add_argument("--force", action="store_true", help="rebuild even when built")
    args = parser.parse_args(argv)
    from .profiles import load_profile

    root = Path(args.root) if args.root else stand_ins_dir(load_profile("smoke"))
    build(root, force=args.force)
    print(f"hub stand-ins in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
