"""The compute chapter's five figures: each hot path as a ratio to its limit or to the official pattern.

    python benchmarks/bench_all.py                          # mini models, 3 repeats (about 10-15 min)
    python benchmarks/bench_all.py --profile tiny --repeats 2   # the tiny world: a smoke run in ~1 min
    python benchmarks/bench_all.py --figures 1,4 --repeats 5

Figures (issue 7), each measured ``--repeats`` times with the two sides interleaved in one process;
the ratio of every repeat is kept and the table shows its min and median:

1. **Decode efficiency** -- contrastive decoding (``distill.decode_batch``, base + toxic, batch 128,
   256 tokens) in positions/s, divided by one teacher-forced forward of both models (with
   ``log_softmax``, as decoding needs) over the very sequences it produced: the limit decoding can
   approach. Goal >= 0.5.
2. **Distillation vs the official pattern** -- the same decoder vs Hugging Face ``generate`` over a
   wrapper whose forward also runs the toxic model on the whole prefix, without a cache of its own
   (``EminLU/UniDetox``'s shape), same batch; the wrapper's cost grows with the square of the length,
   so the figure is taken at ``--ref-tokens`` (64) and grows with longer texts. Goal >= 3x.
3. **Evaluation** -- 25 continuations x 20 tokens for N prompts, both toxicity scorers, conditional
   perplexity under the evaluator, vs the official loop: ``generate`` per prompt
   (``num_return_sequences=25``), each continuation scored alone, perplexity from two forward passes
   per row (prompt + continuation, then the prompt). Goal >= 5x.
4. **MMLU** -- ``metrics.mmlu_accuracy`` (prompt once per question, choices on its KV cache,
   ``"Answer:"`` terms once per distinct choice) vs one forward per choice for both scores. Goal >= 3x.
5. **Memory** -- peak RSS of a fresh process running the mini evaluation at the profile's batch sizes
   (goal <= 4 GB), and the paper profile's GPU memory estimated from the models' shapes.

Timing on a shared CPU: every number is wall-clock in one process (1 torch thread by default: on the
2-core machine shared with other sessions, two OpenMP threads mostly wait for each other); the CPU
time ratio (``cpu_ratio``) is printed beside it because it barely moves with the load. The 1-minute
load average is recorded with each figure. Writes ``results/<profile>/benchmark.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unidetox_core import data, distill, forward, generate, metrics, models, profiles, scorers, world  # noqa: E402

CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def machine() -> dict:
    name, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return dict(cpu_model=name, cpu_flags=" ".join(f for f in CPU_FLAGS if f in flags) or "-",
                torch=torch.__version__, transformers=transformers.__version__, core_digest=core_digest())


def core_digest() -> str:
    """A digest of the timed code as it is on disk, so a row says which version of the decoding code it
    measured, committed or not."""
    digest = hashlib.sha1()
    for name in ("distill.py", "generate.py", "fast.py"):
        path = ROOT / "unidetox_core" / name
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


# Per profile: the sizes each figure runs at (the mini ones are the issue's).
SETTINGS = {
    "mini": dict(batch=128, tokens=256, ref_tokens=64, prompts=24, mmlu=40, repeats=3, rss_prompts=24),
    "tiny": dict(batch=16, tokens=32, ref_tokens=16, prompts=6, mmlu=12, repeats=2, rss_prompts=6),
}
GOALS = {1: 0.5, 2: 3.0, 3: 5.0, 4: 3.0, 5: 4096.0}
RSS_LIMIT_MB = 4096.0
WORDS = ("the a news report says people city state president police game team season year time new first said "
         "would could also will one two three market school women men group family world water day good bad").split()


# ----------------------------------------------------------------------------------------- timing
class Timer:
    """Wall and CPU seconds of a block (CPU time counts this process's threads only)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False


def load_now() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------------------- models
def world_folder(profile: str, name: str) -> Path | None:
    """The world model's folder when it is already built -- never builds it (that is the world package's job)."""
    settings = world.world_settings(profiles.load_profile(profile))
    path = world.step_path(settings, name, world.model_config(settings, name))
    return path if (path / "world.json").exists() else None


def random_model(profile: str, name: str, tokenizer):
    spec = world.WORLD_SETTINGS[profile]["models"][name]
    sizes = {k: spec[k] for k in ("d_model", "n_layer", "n_head")}
    return models.build_small_model(spec["arch"], tokenizer, seed=spec["init_seed"], max_positions=spec["context"],
                                    **sizes).eval()


def trained_bpe_tokenizer(profile: str):
    """A BPE tokenizer of the world's size, trained on the mirrored prompts and MMLU text (offline)."""
    vocab = world.WORLD_SETTINGS[profile]["vocab_size"]
    texts = []
    with contextlib.suppress(Exception):
        P = profiles.load_profile(profile)
        texts += data.load_eval_prompts(P, "test")["text"].tolist() + data.load_eval_prompts(P, "val")["text"].tolist()
        mmlu = data.load_mmlu_for(P, "test")
        texts += mmlu["question"].tolist() + [c for cs in mmlu["choices"] for c in cs]
    if len(texts) < 1000:
        rng = random.Random(0)
        texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))) for _ in range(2000)]
    return models.train_tokenizer(texts, "bpe", vocab_size=vocab)


def toxic_folder(base) -> Path | None:
    """A toxic model under cache/toxic with the base model's shape (timing depends on shape only)."""
    for config_path in sorted((ROOT / "cache" / "toxic").glob("*/final/config.json")):
        with contextlib.suppress(Exception):
            config = json.loads(config_path.read_text())
            if all(config.get(k) == getattr(base.config, k, None) for k in ("model_type", "vocab_size", "n_embd",
                                                                            "n_layer", "n_head", "hidden_size")):
                return config_path.parent
    return None


def load_models(profile: str) -> dict:
    """Source, toxic and evaluator models of ``profile`` (world models when built, else random ones of
    the same size), with a line per model saying which."""
    notes = []
    folder = world_folder(profile, "gpt2-bpe")
    if folder is not None:
        base, tok = models.load_model(str(folder), device="cpu")
        notes.append(f"source: world gpt2-bpe ({folder.name})")
    else:
        tok = trained_bpe_tokenizer(profile)
        base = random_model(profile, "gpt2-bpe", tok)
        notes.append(f"source: RANDOM gpt2 of the {profile} size (world model not built yet), BPE tokenizer of "
                     f"{len(tok)} tokens trained on mirrored prompts/MMLU text")
    folder = toxic_folder(base)
    if folder is not None:
        toxic, _ = models.load_model(str(folder), device="cpu")
        notes.append(f"toxic: {folder.parent.name}/final")
    else:
        toxic = copy.deepcopy(base)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in toxic.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        notes.append("toxic: the source with perturbed weights (no toxic model of this size cached; decoding time "
                     "depends on the shape only)")
    folder = world_folder(profile, "evaluator")
    if folder is not None:
        evaluator, ev_tok = models.load_model(str(folder), device="cpu")
        notes.append(f"evaluator: world evaluator ({folder.name})")
    else:
        evaluator, ev_tok = random_model(profile, "evaluator", tok), tok
        notes.append(f"evaluator: RANDOM llama of the {profile} evaluator size (world model not built yet)")
    for m in (base, toxic, evaluator):
        m.eval()
    return dict(base=base, toxic=toxic, tok=tok, evaluator=evaluator, ev_tok=ev_tok, notes=notes)


def toxicity_scorers(profile: str) -> tuple[list, list[str]]:
    P = profiles.load_profile(profile)
    found, notes = [], []
    for key in ("toxicity_scorer", "second_toxicity_scorer"):
        name = P[key]
        if name.endswith("_tfidf"):
            settings = world.world_settings(P)
            path = world.step_path(settings, name, world.classifier_config(settings, name), ".joblib")
            if not path.exists():
                notes.append(f"{name}: not built yet, left out")
                continue
            found.append(scorers.get_toxicity_scorer(name, path=str(path)))
        else:
            with contextlib.suppress(Exception):
                found.append(scorers.get_toxicity_scorer(name))
    return found, notes


# -------------------------------------------------------------------------- figure 1: vs forward
@torch.inference_mode()
def teacher_forced(base, toxic, ids: torch.Tensor, chunk: int = 16) -> None:
    """One forward of both models over ``ids`` with the log-softmax decoding needs (rows in chunks, so
    the logits stay in cache: 16 rows measured fastest among 4-64 for the mini models)."""
    for model in (base, toxic):
        for start in range(0, len(ids), chunk):
            torch.log_softmax(model(input_ids=ids[start:start + chunk]).logits.float(), dim=-1)


def figure_decode(M, S, repeat: int) -> dict:
    base, toxic, tok = M["base"], M["toxic"], M["tok"]
    start_id, eos_id = models.start_token_id(tok), tok.eos_token_id
    generator = distill.batch_generator(repeat, 0, torch.device("cpu"))
    with Timer() as ours:
        out = distill.decode_batch(base, toxic, batch_size=S["batch"], max_new_tokens=S["tokens"], start_id=start_id,
                                   eos_id=eos_id, generator=generator, alpha=0.1)
    positions = S["batch"] * out["steps"]
    inputs = torch.cat([torch.full((S["batch"], 1), start_id), out["ids"][:, :-1]], dim=1)  # what predicted each
    with Timer() as forward:
        teacher_forced(base, toxic, inputs)
    return dict(ours=positions / ours.wall, base=positions / forward.wall, ratio=forward.wall / ours.wall,
                cpu_ratio=forward.cpu / ours.cpu, detail=f"{out['steps']} steps x {S['batch']} rows")


# ---------------------------------------------------------------------- figure 2: official pattern
def official_wrapper(base, toxic, alpha: float):
    """The official code's shape: a copy of the base model whose forward, called by ``generate`` with
    the base's cache, also runs the toxic model -- on the whole prefix, as it keeps no cache of its own
    -- and returns the contrastive scores (Eq. 1 + 3) as logits."""
    wrapper = copy.copy(base)  # shares modules and weights; only ``forward`` differs
    model_class = type(base)
    state = {"prefix": None}

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        fresh = cache is None or cache.get_seq_length() == 0
        state["prefix"] = input_ids if fresh else torch.cat([state["prefix"], input_ids], dim=1)
        out = model_class.forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        toxic_logits = toxic(input_ids=state["prefix"]).logits[:, -1:]
        scores = distill.contrastive_scores(torch.log_softmax(out.logits[:, -1:].float(), -1),
                                            torch.log_softmax(toxic_logits.float(), -1), alpha)
        out.logits = scores
        return out

    wrapper.forward = types.MethodType(forward, wrapper)
    return wrapper


def figure_reference(M, S, repeat: int) -> dict:
    base, toxic, tok = M["base"], M["toxic"], M["tok"]
    start_id, eos_id = models.start_token_id(tok), tok.eos_token_id
    rows, length = S["batch"], S["ref_tokens"]
    with Timer() as ours:
        out = distill.decode_batch(base, toxic, batch_size=rows, max_new_tokens=length, start_id=start_id,
                                   eos_id=eos_id, generator=distill.batch_generator(repeat, 1, torch.device("cpu")))
    wrapper = official_wrapper(base, toxic, 0.1)
    start = torch.full((rows, 1), start_id)
    torch.manual_seed(repeat)
    with Timer() as official, torch.inference_mode():
        generated = wrapper.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                                     top_p=1.0, temperature=1.0, max_new_tokens=length, pad_token_id=eos_id)
    positions = rows * out["steps"]
    return dict(ours=positions / ours.wall, base=rows * (generated.shape[1] - 1) / official.wall,
                ratio=official.wall / ours.wall, cpu_ratio=official.cpu / ours.cpu,
                detail=f"{rows} rows x {length} tokens")


# --------------------------------------------------------------------------- figure 3: evaluation
def eval_prompt_texts(profile: str, n: int) -> list[str]:
    with contextlib.suppress(Exception):
        texts = data.load_eval_prompts(profiles.load_profile(profile), "test")["text"].tolist()
        if texts:
            return texts[:n]
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) for _ in range(n)]


def evaluation_ours(M, prompts, scorer_list, P, seed: int) -> dict:
    """The project's evaluation of one variant (experiments.evaluate without the cache)."""
    stages = {}
    with Timer() as t:
        frame = generate.generate_continuations(M["base"], M["tok"], prompts, n=P["eval_n_continuations"],
                                                max_new_tokens=P["eval_max_new_tokens"], top_p=P["eval_top_p"],
                                                seed=seed, batch_size=P["eval_batch_size"], progress=False)
    stages["generate"] = t.wall
    with Timer() as t:
        for scorer in scorer_list:
            scorer(frame["continuation"].tolist())
    stages["score"] = t.wall
    with Timer() as t:
        metrics.conditional_perplexity(M["evaluator"], M["ev_tok"], frame["prompt"].tolist(),
                                       frame["continuation"].tolist(), drop_threshold=float("inf"))
    stages["ppl"] = t.wall
    return dict(rows=len(frame), stages=stages, frame=frame)


@torch.inference_mode()
def evaluation_official(M, prompts, scorer_list, P) -> dict:
    """The official loop: ``generate`` per prompt, one text per scorer call, two forwards per row."""
    base, tok, evaluator, ev_tok = M["base"], M["tok"], M["evaluator"], M["ev_tok"]
    n, new_tokens = P["eval_n_continuations"], P["eval_max_new_tokens"]
    stages = dict(generate=0.0, score=0.0, ppl=0.0)
    rows = 0
    for prompt in prompts:
        with Timer() as t:
            enc = tok(prompt, return_tensors="pt")
            out = base.generate(**enc, do_sample=True, top_p=P["eval_top_p"], top_k=0, max_new_tokens=new_tokens,
                                num_return_sequences=n, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        stages["generate"] += t.wall
        with Timer() as t:
            for text in texts:
                for scorer in scorer_list:
                    scorer([text])
        stages["score"] += t.wall
        with Timer() as t:
            context = ev_tok(prompt).input_ids or [models.start_token_id(ev_tok)]
            for text in texts:
                whole = ev_tok(prompt + text).input_ids
                if len(whole) <= len(context):
                    continue
                full = evaluator(input_ids=torch.tensor([whole]), labels=torch.tensor([whole])).loss
                part = evaluator(input_ids=torch.tensor([context]), labels=torch.tensor([context])).loss
                nll = full * (len(whole) - 1) - part * (len(context) - 1)
                math.exp(float(nll) / (len(whole) - len(context)))
        stages["ppl"] += t.wall
        rows += len(texts)
    return dict(rows=rows, stages=stages)


def fitting_prompts(M, profile: str, n: int) -> list[str]:
    """``n`` test prompts that fit both models' windows with their continuations (the official loop
    cannot cut them; on the mini models all fit)."""
    P = profiles.load_profile(profile)
    room = min(forward.max_positions(M["base"]) or 10 ** 9, forward.max_positions(M["evaluator"]) or 10 ** 9)
    room -= 2 * P["eval_max_new_tokens"]
    texts = eval_prompt_texts(profile, 10 * n)
    return [t for t in texts if len(M["tok"](t).input_ids) <= room and len(M["ev_tok"](t).input_ids) <= room][:n]


def figure_evaluation(M, S, repeat: int, profile: str, scorer_list) -> dict:
    P = profiles.load_profile(profile)
    prompts = fitting_prompts(M, profile, S["prompts"])
    with Timer() as ours_t:
        ours = evaluation_ours(M, prompts, scorer_list, P, seed=repeat)
    with Timer() as official_t:
        official = evaluation_official(M, prompts, scorer_list, P)
    stage_ratios = " ".join(f"{k} {official['stages'][k] / max(ours['stages'][k], 1e-9):.1f}x"
                            for k in ("generate", "score", "ppl"))
    stage_share = " ".join(f"{k} {v:.1f}s" for k, v in ours["stages"].items())
    return dict(ours=ours["rows"] / ours_t.wall, base=official["rows"] / official_t.wall,
                ratio=official_t.wall / ours_t.wall, cpu_ratio=official_t.cpu / ours_t.cpu,
                detail=f"{len(prompts)} prompts x {P['eval_n_continuations']}; by stage {stage_ratios}; "
                       f"ours {stage_share}")


# ------------------------------------------------------------------------------------ figure 4: MMLU
def mmlu_frames(profile: str, n: int):
    P = profiles.load_profile(profile)
    with contextlib.suppress(Exception):
        test, dev = data.load_mmlu_for(P, "test"), data.load_mmlu_for(P, "dev")
        return data.subsample_stratified(test, n, seed=0, by="subject").sample(frac=1.0, random_state=0), dev, "mirror"
    rng = random.Random(0)
    sentence = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    make = lambda k: pd.DataFrame({"subject": [f"s{i % 4}" for i in range(k)],
                                   "question": [sentence(8, 30) for _ in range(k)],
                                   "choices": [[sentence(1, 6) for _ in range(4)] for _ in range(k)],
                                   "answer": [rng.randrange(4) for _ in range(k)]})
    return make(n), make(8), "made-up"


@torch.inference_mode()
def mmlu_per_choice(model, tok, questions, dev, k_shot: int) -> float:
    """One forward per choice after the prompt and one per choice after "Answer:" (both scores)."""

    def choice_logprob(context, choice):
        context_ids = tok(context).input_ids
        whole = tok(context + " " + choice).input_ids
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))

    correct = 0
    for row in questions.itertuples():
        shots = [(r.question, list(r.choices)[int(r.answer)]) for r in dev[dev.subject == row.subject].itertuples()][:k_shot]
        prompt = metrics.mmlu_prompt(row.question, shots)
        scores = [choice_logprob(prompt, c) - choice_logprob(metrics.ANSWER_CONTEXT, c) for c in row.choices]
        correct += int(np.argmax(scores)) == int(row.answer)
    return correct / len(questions)


def figure_mmlu(M, S, repeat: int, profile: str) -> dict:
    P = profiles.load_profile(profile)
    pool, dev, source = mmlu_frames(profile, 20 * S["mmlu"])
    limit = forward.max_positions(M["base"]) or 10 ** 9
    # The per-choice loop cannot cut prompts to the window: take questions whose prompt fits it
    # (with fewer shots if none fit, as on the tiny models' 64 positions).
    for k_shot in range(P["mmlu_shots"], -1, -1):
        shots = {subject: [(r.question, list(r.choices)[int(r.answer)]) for r in group.itertuples()][:k_shot]
                 for subject, group in dev.groupby("subject")}
        fits = [len(M["tok"](metrics.mmlu_prompt(q, shots.get(s, [])) + " " + max(map(str, c), key=len)).input_ids)
                <= limit for q, s, c in zip(pool.question, pool.subject, pool.choices)]
        questions = pool[fits].head(S["mmlu"]).reset_index(drop=True)
        if len(questions) >= min(S["mmlu"], len(pool)) // 2:
            break
    with Timer() as ours:
        result = metrics.mmlu_accuracy(M["base"], M["tok"], questions, dev, k_shot=k_shot)
    with Timer() as loop:
        accuracy = mmlu_per_choice(M["base"], M["tok"], questions, dev, k_shot)
    n = len(questions)
    return dict(ours=n / ours.wall, base=n / loop.wall, ratio=loop.wall / ours.wall, cpu_ratio=loop.cpu / ours.cpu,
                detail=f"{n} {source} questions, {k_shot}-shot; accuracy {result['acc_normalized']:.3f} "
                       f"batched vs {accuracy:.3f} loop")


# --------------------------------------------------------------------------------- figure 5: memory
def rss_child(profile: str, prompts: int, threads: int) -> None:
    """Run in a fresh process: load the models, evaluate ``prompts`` prompts, print the peak RSS."""
    torch.set_num_threads(threads)
    M = load_models(profile)
    scorer_list, _ = toxicity_scorers(profile)
    P = profiles.load_profile(profile)
    evaluation_ours(M, fitting_prompts(M, profile, prompts), scorer_list, P, seed=0)
    print(json.dumps({"max_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (reset by ``exec``; ``ru_maxrss`` is not, so in a
    child started by a large parent it reports the parent's size)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_rss(profile: str, prompts: int, threads: int) -> float:
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--profile", profile, "--rss-child",
                             str(prompts), "--threads", str(threads)], capture_output=True, text=True, cwd=ROOT)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["max_rss_mb"]
    raise RuntimeError(f"the memory child failed:\n{result.stderr[-2000:]}")


# The paper profile's models (public configs): layers, hidden size, KV heads x head size, vocabulary.
PAPER_MODELS = {
    "gpt2-xl": dict(params=1.56e9, layers=48, hidden=1600, kv=25 * 64, vocab=50257),
    "opt-6.7b": dict(params=6.66e9, layers=32, hidden=4096, kv=32 * 128, vocab=50272),
    "falcon-7b": dict(params=6.92e9, layers=32, hidden=4544, kv=1 * 64, vocab=65024),  # multi-query
    "llama-2-7b": dict(params=6.74e9, layers=32, hidden=4096, kv=32 * 128, vocab=32000),
}


def kv_cache_bytes(layers: int, kv: int, tokens: int, bytes_per: int = 2) -> int:
    """Keys and values of every layer for ``tokens`` positions (rows x length)."""
    return 2 * layers * kv * tokens * bytes_per


def stage_memory(model: dict, rows: int, length: int, logit_positions: int, bytes_per: int = 2) -> float:
    """Bytes for one batched inference stage: bf16 weights, bf16 KV cache, float32 logits and two
    float32 vocabulary-sized temporaries (log-softmax, scores) per scored position, and activations
    (about 16 hidden-size vectors per row for one decoding step or per position for a prompt)."""
    weights = model["params"] * bytes_per
    cache = kv_cache_bytes(model["layers"], model["kv"], rows * length, bytes_per)
    logits = 3 * 4 * model["vocab"] * rows * logit_positions
    activations = 16 * model["hidden"] * rows * length * bytes_per
    return weights + cache + logits + activations


def paper_gpu_estimate() -> list[tuple[str, float]]:
    """GiB per paper stage at the paper's batch sizes (distillation 128 rows x 257 positions, two
    GPT-2 XL; evaluation 64 rows x (<= 128 prompt + 20) tokens; perplexity under LLaMA-2-7B; MMLU 8
    questions x 4 choices of <= 1024 tokens)."""
    gib = 1024 ** 3
    xl = PAPER_MODELS["gpt2-xl"]
    rows = [("distillation: GPT-2 XL base + toxic, 128 x 257", 2 * stage_memory(xl, 128, 257, 1) / gib)]
    for name in ("opt-6.7b", "falcon-7b", "llama-2-7b"):
        rows.append((f"evaluation: {name} generates 64 x 148", stage_memory(PAPER_MODELS[name], 64, 148, 1) / gib))
    rows.append(("perplexity: llama-2-7b, 64 rows x 148, 20 scored", stage_memory(PAPER_MODELS["llama-2-7b"], 64, 148, 20) / gib))
    rows.append(("MMLU: llama-2-7b, 32 rows x 1024 (3-shot)", stage_memory(PAPER_MODELS["llama-2-7b"], 32, 1024, 8) / gib))
    return rows


def check_kv_formula(M) -> str:
    """The KV formula against a real cache of the source model (bytes counted from its tensors)."""
    base = M["base"]
    with torch.inference_mode():
        out = base(input_ids=torch.zeros((3, 17), dtype=torch.long), use_cache=True)
    cache = forward.out_cache(out)
    actual = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                 for layer in cache.layers)
    config = base.config
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    predicted = kv_cache_bytes(layers, hidden, 3 * 17, bytes_per=4)
    return f"KV formula {predicted} B vs {actual} B measured on the source model"


def figure_memory(M, S, profile: str, threads: int) -> tuple[dict, list]:
    with Timer() as t:
        peak = measure_rss(profile, S["rss_prompts"], threads)
    estimate = paper_gpu_estimate()
    return dict(ours=peak, base=RSS_LIMIT_MB, ratio=peak / RSS_LIMIT_MB, cpu_ratio=float("nan"),
                detail=f"peak RSS of a fresh process evaluating {S['rss_prompts']} prompts at the profile's batch "
                       f"sizes ({t.wall:.0f} s); {check_kv_formula(M)}"), estimate


# ------------------------------------------------------------------------------------------ report
FIGURES = {
    1: ("decode efficiency (vs teacher-forced forward)", "positions/s", "ratio >= 0.5"),
    2: ("distillation vs official pattern", "positions/s", "ratio >= 3"),
    3: ("evaluation vs per-prompt loop", "rows/s", "ratio >= 5"),
    4: ("MMLU batched vs per-choice", "questions/s", "ratio >= 3"),
    5: ("peak RSS of the evaluation (fresh process)", "MB", "<= 4096 MB"),
}


def summarize(number: int, runs: list[dict], loads: list[float]) -> dict:
    ratios = [r["ratio"] for r in runs]
    cpu = [r["cpu_ratio"] for r in runs if not math.isnan(r["cpu_ratio"])]
    median = statistics.median(ratios)
    goal = GOALS[number]
    met = median <= 1.0 if number == 5 else median >= goal
    return {
        "figure": number, "measured": statistics.median(r["ours"] for r in runs),
        "baseline": statistics.median(r["base"] for r in runs), "ratio": median, "goal": goal if number != 5 else 1.0,
        "met": bool(met), "repeats": len(runs), "load": statistics.mean(loads),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "cpu_ratio_median": statistics.median(cpu) if cpu else None,
        "unit": FIGURES[number][1], "what": FIGURES[number][0], "detail": runs[-1]["detail"],
    }


def one_line(row: dict) -> str:
    if row["figure"] == 5:
        return (f"Figure 5 - {row['what']}: {row['measured']:.0f} MB of {RSS_LIMIT_MB:.0f} MB "
                f"(load {row['load']:.1f}) - goal <= 4 GB: {'MET' if row['met'] else 'NOT MET'}")
    cpu = f", CPU-time ratio {row['cpu_ratio_median']:.2f}" if row["cpu_ratio_median"] else ""
    return (f"Figure {row['figure']} - {row['what']}: {row['ratio']:.2f}x (min {row['ratio_min']:.2f}, median "
            f"{row['ratio']:.2f} over {row['repeats']} repeats{cpu}; load {row['load']:.1f}) - goal "
            f"{FIGURES[row['figure']][2]}: {'MET' if row['met'] else 'NOT MET'}")


COLUMNS = ["figure", "measured", "baseline", "ratio", "goal", "met", "repeats", "load", "ratio_min", "ratio_max",
           "cpu_ratio_median", "unit", "what", "detail", "cpu_model", "cpu_flags", "torch", "transformers",
           "core_digest"]


def write_csv(rows: list[dict], path: Path, columns: list[str] = COLUMNS) -> None:
    """``rows`` as a CSV of ``columns`` (floats to 4 digits), written under a temporary name first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'fig':<4}{'what':<46}{'unit':<12}{'ours':>10}{'baseline':>10}{'ratio':>8}{'min':>7}{'cpu':>7}"
          f"{'goal':>7}{'met':>5}{'n':>3}{'load':>6}")
    for r in rows:
        cpu = f"{r['cpu_ratio_median']:.2f}" if r["cpu_ratio_median"] else "-"
        print(f"{r['figure']:<4}{r['what']:<46}{r['unit']:<12}{r['measured']:>10.1f}{r['baseline']:>10.1f}"
              f"{r['ratio']:>8.2f}{r['ratio_min']:>7.2f}{cpu:>7}{r['goal']:>7.2f}{'yes' if r['met'] else 'no':>5}"
              f"{r['repeats']:>3}{r['load']:>6.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini", choices=sorted(SETTINGS))
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default: 3 mini, 2 tiny)")
    parser.add_argument("--figures", default="1,2,3,4,5", help="comma-separated figure numbers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the module docstring)")
    parser.add_argument("--prompts", type=int, default=None, help="figure 3: prompts (default 24 mini, 6 tiny)")
    parser.add_argument("--ref-tokens", type=int, default=None, help="figure 2: tokens (default 64 mini)")
    parser.add_argument("--bf16", action="store_true",
                        help="run both sides of every figure under bf16 autocast (CPU default is float32; "
                             "writes benchmark-bf16.csv)")
    parser.add_argument("--out", default=None, help="CSV path (default results/<profile>/benchmark.csv)")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        rss_child(args.profile, args.rss_child, args.threads)
        return 0
    S = dict(SETTINGS[args.profile])
    S["repeats"] = args.repeats or S["repeats"]
    S["prompts"] = args.prompts or S["prompts"]
    S["ref_tokens"] = args.ref_tokens or S["ref_tokens"]
    figures = [int(f) for f in args.figures.split(",") if f.strip()]

    M = load_models(args.profile)
    scorer_list, scorer_notes = toxicity_scorers(args.profile)
    print(f"profile {args.profile}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} cores, load {load_now():.1f}")
    for note in M["notes"] + scorer_notes + [f"scorers: {', '.join(s.name for s in scorer_list)}"]:
        print("  " + note)

    # Warm-up: first calls pay for lazy initialisation on both sides.
    tok = M["tok"]
    distill.decode_batch(M["base"], M["toxic"], batch_size=2, max_new_tokens=3, start_id=models.start_token_id(tok),
                         eos_id=tok.eos_token_id, generator=torch.Generator().manual_seed(0))
    generate.generate_continuations(M["base"], tok, ["warm up"], n=2, max_new_tokens=2, progress=False)

    runners = {1: lambda r: figure_decode(M, S, r), 2: lambda r: figure_reference(M, S, r),
               3: lambda r: figure_evaluation(M, S, r, args.profile, scorer_list),
               4: lambda r: figure_mmlu(M, S, r, args.profile)}
    rows, estimate = [], None
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    if args.bf16:
        print("  precision: bf16 autocast on both sides of every figure")
    for number in figures:
        loads, runs = [load_now()], []
        if number == 5:
            run, estimate = figure_memory(M, S, args.profile, args.threads)
            runs.append(run)
        else:
            for repeat in range(S["repeats"]):
                with precision:
                    run = runners[number](repeat)
                runs.append(run)
                loads.append(load_now())
                print(f"  figure {number} repeat {repeat + 1}: ratio {run['ratio']:.2f} (cpu {run['cpu_ratio']:.2f}), "
                      f"ours {run['ours']:.1f} vs {run['base']:.1f} {FIGURES[number][1]}, load {loads[-1]:.1f}; "
                      f"{run['detail']}", flush=True)
        loads.append(load_now())
        row = summarize(number, runs, loads)
        rows.append(row)
        print(one_line(row), flush=True)

    print_table(rows)
    if estimate:
        print("\nPaper profile, estimated GPU memory per stage (bf16 weights and KV cache; an A100 has 80 GB):")
        for label, gib in estimate:
            print(f"  {label:<55}{gib:7.1f} GiB")
        rows.append({"figure": "5b", "measured": max(g for _, g in estimate), "baseline": 80.0,
                     "ratio": max(g for _, g in estimate) / 80.0, "goal": 1.0,
                     "met": max(g for _, g in estimate) <= 80.0, "repeats": 0, "load": float("nan"),
                     "unit": "GiB", "what": "paper profile GPU memory (estimate, largest stage)",
                     "detail": "; ".join(f"{label}: {gib:.1f} GiB" for label, gib in estimate)})
    print()
    for row in rows:
        if row["figure"] != "5b":
            print(one_line(row))
    name = "benchmark-bf16.csv" if args.bf16 else "benchmark.csv"
    out = Path(args.out) if args.out else ROOT / "results" / args.profile / name
    info = machine()  # a figure is a property of the machine as much as of the code
    print(f"CPU: {info['cpu_model']}; flags: {info['cpu_flags']}")
    write_csv([{**row, **info} for row in rows], out)
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
