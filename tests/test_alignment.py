"""Gradient alignment (Eq. 5): s(x) ~= (theta_base - theta_toxic)^T grad log p_base(x)."""

import copy

import pytest
import torch

from unidetox_core import analysis, finetune


def test_columns_and_exact_contrastive_score(tiny_gpt2, corpus):
    base, tok = tiny_gpt2
    toxic = copy.deepcopy(base)
    with torch.no_grad():
        for p in toxic.parameters():
            p.add_(0.01 * torch.randn_like(p))
    texts = corpus[:5]
    frame = analysis.gradient_alignment(base, toxic, tok, texts, max_length=32, batch_size=2)
    assert list(frame.columns) == ["text", "n_tokens", "logp_base", "logp_toxic", "contrastive_score",
                                   "grad_dot", "grad_norm", "tau_norm", "cosine"]
    assert frame["text"].tolist() == texts
    assert torch.allclose(torch.tensor(frame["contrastive_score"].values),
                          torch.tensor((frame["logp_base"] - frame["logp_toxic"]).values))
    seqs = finetune.tokenize_texts(tok, texts, 32)
    with torch.no_grad():
        for seq, row in zip(seqs, frame.itertuples()):
            nll, n = finetune.summed_token_nll(base.eval(), torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
            assert row.n_tokens == n and row.logp_base == pytest.approx(-float(nll), rel=1e-5)
    assert frame["cosine"].abs().le(1).all()
    assert all(p.grad is None for p in base.parameters())  # gradients are not left on the model


def test_first_order_approximation_of_eq5_holds_for_a_small_toxic_vector(tiny_gpt2, corpus):
    base, tok = tiny_gpt2
    base = base.double()
    torch.manual_seed(0)
    delta = [torch.randn_like(p) for p in base.parameters()]
    errors = []
    for eps in (1e-3, 1e-4):  # theta_toxic = theta_base + eps * delta
        toxic = copy.deepcopy(base)
        with torch.no_grad():
            for p, d in zip(toxic.parameters(), delta):
                p.add_(eps * d)
        frame = analysis.gradient_alignment(base, toxic, tok, corpus[:6], max_length=32)
        errors.append((frame["contrastive_score"] - frame["grad_dot"]).abs().max())
        assert (frame["contrastive_score"] * frame["grad_dot"] > 0).all()  # same sign for every text
    # s(x) minus its first-order expansion is a second-order remainder: 10x smaller step, ~100x smaller
    assert errors[1] < errors[0] / 50


def test_cosine_is_one_when_the_toxic_vector_is_a_texts_own_gradient(tiny_gpt2, corpus):
    base, tok = tiny_gpt2
    base = base.double().eval()
    text = corpus[0]
    seq = torch.tensor(finetune.tokenize_texts(tok, [text], 32))
    nll, _ = finetune.summed_token_nll(base, seq, torch.ones_like(seq))
    grads = torch.autograd.grad(-nll, list(base.parameters()))
    toxic = copy.deepcopy(base)
    with torch.no_grad():  # theta_base - theta_toxic = 1e-3 * grad log p_base(text)
        for p, g in zip(toxic.parameters(), grads):
            p.sub_(1e-3 * g)
    frame = analysis.gradient_alignment(base, toxic, tok, [text, corpus[1]], max_length=32)
    assert frame.loc[0, "cosine"] == pytest.approx(1.0, abs=1e-9)
    assert frame.loc[1, "cosine"] < 0.99


def test_models_of_different_shapes_have_no_toxic_vector(tiny_gpt2, tiny_opt, corpus):
    with pytest.raises(ValueError, match="fine-tune of the base model"):
        analysis.gradient_alignment(tiny_gpt2[0], tiny_opt[0], tiny_gpt2[1], corpus[:1])
