"""The optional lm-eval backend (extra `lm_eval`, part of `dev`) against gmates' own scorer on the same prompts."""
from __future__ import annotations

import pytest
import torch

from gmates_assets.core import lm_eval_backend
from gmates_assets.core.evaluation import encode_requests, evaluate_tasks, load_task, score_encoded, task_requests

from .test_icl import TASKS, _byte_level_bpe, _spec, _tiny_llama


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = _byte_level_bpe()  # no BOS, byte-level: lm-eval's joint encoding splits where gmates' pieces meet
    return _tiny_llama(len(tok)), tok


@pytest.mark.parametrize("name", ["piqa", "copa", "arc_easy", "winograd", "lambada_openai"])
def test_per_item_loglikelihoods_match_gmates(tmp_path, model_and_tokenizer, name):
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tokenizer
    spec = _spec(tmp_path, name)
    if name == "piqa":  # 2-shot on 3 items: lm-eval's sampler may order the two examples differently
        spec = type(spec)(**{**spec.__dict__, "shots": 0})
    items = load_task(spec)
    ours = task_requests(spec, items, tok)
    scores = score_encoded(model, encode_requests(tok, ours), pad_id=0, batch_size=4, device="cpu")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    theirs, their_scores = lm_eval_backend.task_scores(lm, spec, items)
    assert [(r.item, r.option, r.prompt, r.continuation) for r in ours] == [
        (r.item, r.option, r.context, r.continuation) for r in theirs]  # the same texts
    for mine, other in zip(scores, their_scores):
        assert other.logprob == pytest.approx(mine.logprob, abs=1e-4)
        assert (other.n_tokens, other.greedy_match) == (mine.n_tokens, mine.greedy_match)


def test_backend_reports_the_same_metrics(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    specs = [_spec(tmp_path, name) for name in ("copa", "arc_easy", "winograd", "lambada_openai")]
    with torch.no_grad():
        ours = evaluate_tasks(model, tok, specs, device="cpu")
        theirs = lm_eval_backend.evaluate_tasks(model, tok, specs, batch_size=4, device="cpu")
    assert theirs["core_version"] == ours["core_version"] and set(theirs["tasks"]) == set(TASKS) - {"piqa"}
    for name, result in ours["tasks"].items():
        assert theirs["tasks"][name]["accuracy"] == result["accuracy"]
        assert theirs["tasks"][name]["n_items"] == result["n_items"]
    assert theirs["core"] == pytest.approx(ours["core"])
