"""Pool-input throughput, measured side by side in one run on the same demo documents.

1. LM tokenization: `tokenize_documents` (ragged int32 arrays, EOS, truncation) vs a bare
   `tokenizers.Tokenizer.encode_batch` on the same texts. Target ratio >= 0.8.
2. Embedding: `embed_documents` (chunking, length-sorted batches, zarr commits) vs a bare transformers
   forward over the same encoder rows with the same batch size at the full chunk length, plus the usual
   HF idiom (tokenizer padding="longest" per batch of documents, first chunk only). Target ratio >= 0.85.

The two sides run in alternating rounds over blocks of documents, so background load on a shared machine
hits both alike. Usage: python benchmarks/pool_throughput.py [--embed-docs 3000] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard  # noqa: E402
from gmates_assets.core.encode import (  # noqa: E402
    chunk_encoder_inputs,
    embed_documents,
    load_encoder,
    pool_chunk_outputs,
    prepare_text,
)
from gmates_assets.core.tokenize import tokenize_documents, train_bpe_tokenizer  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_tokenization(texts: list[str], vocab_size: int, repeats: int) -> None:
    seconds = timed(lambda: train_bpe_tokenizer(texts, vocab_size))
    tok = train_bpe_tokenizer(texts, vocab_size)
    print(f"BPE training ({vocab_size} vocab, {len(texts)} docs): {seconds:.2f} s")
    ours, bare, bare_fast = [], [], []
    for _ in range(repeats):  # interleaved; best of each
        ours.append(timed(lambda: tokenize_documents(tok, texts, max_tokens=128, add_eos=True, batch_size=1024)))
        bare.append(timed(lambda: tok.encode_batch(texts, add_special_tokens=False)))
        bare_fast.append(timed(lambda: tok.encode_batch_fast(texts, add_special_tokens=False)))
    n = len(texts)
    print(f"tokenization: tokenize_documents {n / min(ours):,.0f} docs/s | bare encode_batch "
          f"{n / min(bare):,.0f} docs/s | ratio {min(bare) / min(ours):.2f} (target >= 0.8)")
    print(f"              (bare encode_batch_fast {n / min(bare_fast):,.0f} docs/s, ratio vs it "
          f"{min(bare_fast) / min(ours):.2f})")


@torch.inference_mode()
def bare_rows_forward(model, tok, texts, max_length, chunk_size, batch_size) -> None:
    """The same encoder rows embed_documents encodes (real chunks), unsorted, at the full chunk length."""
    inputs = chunk_encoder_inputs(tok, texts, max_length, chunk_size)
    real = inputs["attention_mask"].sum(-1) > 0
    ids, mask = inputs["input_ids"][real], inputs["attention_mask"][real]
    for start in range(0, len(ids), batch_size):
        hidden = model(input_ids=ids[start:start + batch_size],
                       attention_mask=mask[start:start + batch_size]).last_hidden_state
        pool_chunk_outputs(hidden, mask[start:start + batch_size], "mean")


@torch.inference_mode()
def bare_hf_idiom(model, tok, texts, chunk_size, batch_size) -> None:
    """What a user writes by hand: per batch of documents, pad to the longest, first chunk only."""
    for start in range(0, len(texts), batch_size):
        batch = tok([prepare_text(t) for t in texts[start:start + batch_size]], padding="longest",
                    truncation=True, max_length=chunk_size, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        pool_chunk_outputs(hidden, batch["attention_mask"], "mean")


def bench_embedding(texts: list[str], max_length: int, chunk_size: int, batch_size: int, block: int) -> None:
    model, tok = load_encoder(None)
    inputs = chunk_encoder_inputs(tok, texts, max_length, chunk_size)
    real = (inputs["attention_mask"].sum(-1) > 0).numpy()
    lengths = inputs["attention_mask"].sum(-1).numpy()[real]
    print(f"embedding: {len(texts)} docs, {real.sum()} real chunks of <= {chunk_size} tokens "
          f"(mean {lengths.mean():.0f} tokens), {real.size - real.sum()} padding chunks skipped, "
          f"batch {batch_size}, device {next(model.parameters()).device}, threads {torch.get_num_threads()}")
    bare_fn = lambda part: bare_rows_forward(model, tok, part, max_length, chunk_size, batch_size)  # noqa: E731
    bare_fn(texts[:batch_size])  # warm-up
    ours = bare = idiom = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k, start in enumerate(range(0, len(texts), block)):
            part = texts[start:start + block]
            ours += timed(lambda: embed_documents(model, tok, part, max_length, chunk_size, "mean", batch_size,
                                                  os.path.join(tmp, f"b{k}"), chunk_docs=256))
            bare += timed(lambda: bare_fn(part))
            idiom += timed(lambda: bare_hf_idiom(model, tok, part, chunk_size, batch_size))
    n = len(texts)
    print(f"embedding: embed_documents {n / ours:,.1f} docs/s | bare forward, same rows, full length "
          f"{n / bare:,.1f} docs/s | ratio {bare / ours:.2f} (target >= 0.85)")
    print(f"           bare HF idiom (pad to longest, first chunk) {n / idiom:,.1f} docs/s | ratio {idiom / ours:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embed-docs", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block", type=int, default=500, help="documents per alternating round")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.embed_docs, args.block, args.vocab_size, args.max_length, args.chunk_size = 24, 12, 300, 64, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    params = DemoCorpusParams()
    texts = [d.text for s in range(params.n_shards) for d in generate_demo_shard(params, s)]
    if args.smoke:
        texts = texts[:200]
    print(f"demo corpus: {len(texts)} docs, mean {np.mean([len(t.split()) for t in texts]):.0f} words")
    bench_tokenization(texts, args.vocab_size, repeats=1 if args.smoke else 5)
    bench_embedding(texts[:args.embed_docs], args.max_length, args.chunk_size, args.batch_size, args.block)


if __name__ == "__main__":
    main()
