"""The miniature world: a web-text corpus, two tokenizers, four small LMs and two classifiers.

Hub models cannot be loaded offline, so the ``mini`` profile trains its own stand-ins for the
paper's cast from the mirrored public data, and every later notebook loads them through the same
``models.load_model`` as hub ids (``resolve_model("world:gpt2-bpe", profile)`` gives the folder):

=================  ==============================  ==========================================
world name         architecture / tokenizer        role in the paper
=================  ==============================  ==========================================
``gpt2-bpe``       GPT-2, byte-level BPE            GPT-2 XL: distils the text, is detoxified
``opt-bpe``        OPT, the same BPE                OPT-6.7B: a target of another family
``llama-unigram``  LLaMA, Unigram (SentencePiece)   LLaMA-2-7B: crosses family *and* tokenizer
``evaluator``      LLaMA, BPE, ~2-3x the params     LLaMA-2-7B as the perplexity judge
``davidson_tfidf`` TF-IDF + logistic regression     the second toxicity instrument (Table 8)
``allsides_tfidf`` TF-IDF + logistic regression     PoliticalBiasBERT (Table 3)
=================  ==============================  ==========================================

**The corpus** ("web text") is AllSides news articles (``random``-scheme train split; its valid
split is held out for perplexity, its test split is never touched) mixed with Davidson tweets of
the train split. A share of the toxic training tweets is *reserved* for the toxic corpus
(:func:`toxic_corpus_texts`) and never enters the web text, so the toxic model later learns
something the base model has not seen. The other tweets are packed into thread-like documents of
``tweets_per_thread`` tweets, and their share of the training *tokens* is set exactly
(``tweet_token_share``, counted with the BPE tokenizer). Why the share matters: sampling from BOS
follows the *document* mix, and a feasibility run with tweets as 86% of the documents gave a base
model that wrote profane tweets from BOS (TP 0.94-0.99). Documents are packed GPT-2 style: each
starts with BOS (``<|endoftext|>``, or ``<s>`` ... ``</s>`` for the Unigram scheme), and the
stream is cut into blocks of ``block_tokens`` tokens, so BOS is always a document start.

**The package.** ``settings`` (per-profile values, cache keys), ``corpus`` (text, tokenizers,
stream, blocks), ``pretrain`` (the four models), ``classifiers``, ``checks`` (source-model TP, BOS
samples), ``build`` (the whole world, its report, calibration) and ``python -m unidetox_core.world``.
The names other modules use are imported here.

**Caching.** Every step writes under ``<cache_dir>/world/<name>-<config_key>``; the key of a step
hashes its own settings *and* the keys of the steps it reads, so changing a parameter retrains
only what depends on it (the tweet share, say, keeps the tokenizers but retrains the models).
Model training checkpoints into ``<cache_dir>/world/train-<name>-<key>`` and resumes from there
after an interruption. A step is complete when its ``world.json`` (or its file) exists: it is
written last, atomically.

**Cost and reproducibility.** :func:`build_world` runs the data steps in this process, then
trains the four models and the classifiers in two single-threaded worker processes (one per
core). ``make book`` builds the world this way before any chapter runs (``make world``); in the
timed cold build of the book on the 2-core machine it took 14.1 min
(``results/mini/world/build_times.csv`` has each step). One torch thread per
process fixes the order in which floats are summed, so two builds on one machine gave the same
held-out losses to every digit; a build on another machine of the same kind gave different weights
(another CPU can pick other kernels), so a rebuild elsewhere is another draw of the world. The
Unigram pieces are trained by SentencePiece (``models.sentencepiece_unigram``), one thread and no
sampling, because the ``tokenizers`` Unigram trainer gives slightly different piece scores on every
run, which changed ``llama-unigram`` and every result on it.
"""

from .build import build_world, calibrate_mix, train_in_parallel, unbuilt_steps, write_world_report
from .checks import bos_samples, check_config, source_check, source_toxicity
from .classifiers import allsides_texts, classifier_report, scorer_path, train_classifier
from .corpus import (build_blocks, build_corpus, build_stream, document_markers, load_articles, load_blocks,
                     load_documents, load_world_tokenizer, pack_blocks, toxic_corpus_texts, train_world_tokenizer)
from .pretrain import heldout_loss, model_summary, pretrain_world_model, resolve_model, train_world_model
from .settings import (CLASSIFIERS, MODEL_NAMES, ROOT, WORLD_SETTINGS, WORLD_VERSION, WorldError, blocks_config,
                       classifier_config, corpus_config, model_config, model_spec, results_dir, step_path,
                       stream_config, tokenizer_config, torch_threads, world_dir, world_settings)
