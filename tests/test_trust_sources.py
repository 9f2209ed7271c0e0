"""Trust in what goes in: local model folders enter staleness, commit knobs never change bytes, one file is
read once whatever its spelling, lone surrogates are bad records, and custom model code never runs unasked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gmates_assets.core.encode import default_encoder_dir
from gmates_assets.core.sources import ShardSpec, SourceError, check_files, check_shards_disjoint, read_shard

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, texts) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


# ------------------------------------------------------------------------- 3. one file, two spellings
@pytest.fixture
def pool_file(tmp_path) -> Path:
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    return tmp_path / "a.jsonl"


def test_same_file_by_relative_and_absolute_path_in_two_shards_is_refused(tmp_path, pool_file):
    specs = [ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
             ShardSpec("y", "jsonl", (str(pool_file),), base_dir=str(tmp_path))]
    with pytest.raises(SourceError, match="same file") as err:
        check_shards_disjoint(specs)
    assert err.value.reason == "duplicate_source" and "'x'" in str(err.value) and "'y'" in str(err.value)


def test_same_file_through_a_symlink_in_two_shards_is_refused(tmp_path, pool_file):
    (tmp_path / "link.jsonl").symlink_to(pool_file)
    specs = [ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
             ShardSpec("y", "jsonl", ("link.jsonl",), base_dir=str(tmp_path))]
    with pytest.raises(SourceError, match="same file"):
        check_shards_disjoint(specs)


def test_same_file_twice_in_one_shard_is_refused_before_reading(tmp_path, pool_file):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(pool_file)
    for paths in [("a.jsonl", str(pool_file)), ("a.jsonl", "sub/../link.jsonl"), ("*.jsonl",)]:
        spec = ShardSpec("s", "jsonl", paths, base_dir=str(tmp_path))
        with pytest.raises(SourceError, match="same file"):
            check_files(spec)
        with pytest.raises(SourceError, match="same file"):
            read_shard(spec)  # never the pool doubled


def test_distinct_files_still_pass(tmp_path, pool_file):
    write_jsonl(tmp_path / "b.jsonl", ["three"])
    check_shards_disjoint([ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
                           ShardSpec("y", "jsonl", ("b.jsonl",), base_dir=str(tmp_path))])
    docs, _ = read_shard(ShardSpec("s", "jsonl", ("*.jsonl",), base_dir=str(tmp_path)))
    assert [d.text for d in docs] == ["one", "two", "three"]


# ------------------------------------------------------------------------------ 4. lone surrogates
SURROGATE_TEXT = '{"text": "bad \\ud800 text"}'
SURROGATE_META = '{"text": "fine text", "title": "bad \\udc00"}'


@pytest.mark.parametrize("line,field", [(SURROGATE_TEXT, "text"), (SURROGATE_META, "title")])
def test_lone_surrogate_is_a_bad_record_naming_file_line_and_field(tmp_path, line, field):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
    spec = ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path))
    with pytest.raises(SourceError) as err:
        read_shard(spec)
    message = str(err.value)
    assert message.startswith("a.jsonl, line 2 (row 1)") and repr(field) in message and "surrogate" in message

    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [d.text for d in docs] == ["ok"] and stats.skipped == {"lone_surrogate": 1}
    from gmates_assets.core.sources import write_documents_parquet

    write_documents_parquet(docs, tmp_path / "documents.parquet")  # what is kept can be stored


def test_lone_surrogate_in_a_nested_metadata_value_is_found(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok", "meta": {"tags": ["x", "\\ud83d"]}}\n{"text": "ok"}\n')
    with pytest.raises(SourceError, match="'meta'.*surrogate"):
        read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)))


def test_paired_surrogate_escapes_are_ordinary_text(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "smile \\ud83d\\ude00"}\n')
    docs, _ = read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)))
    assert docs[0].text == "smile \U0001F600"


# ------------------------------------------------------------------------ 5. custom model code refused
CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
raise SystemExit("custom code ran")
"""

LOAD_SCRIPT = """
import sys
from gmates_assets.core.validation import ModelLoadError
kind, folder = sys.argv[1], sys.argv[2]
try:
    if kind == "tokenizer":
        from gmates_assets.core.tokenize import load_lm_tokenizer
        load_lm_tokenizer(folder)
    else:
        from gmates_assets.core.encode import load_encoder
        load_encoder(folder, device="cpu")
except ModelLoadError as err:
    print("REFUSED:", err)
    sys.exit(3)
print("LOADED")
"""


def custom_code_folder(root: Path, kind: str) -> tuple[Path, Path]:
    """A model folder whose config asks for its own python code (auto_map); the code writes a marker file."""
    folder, marker = root / f"custom_{kind}", root / f"{kind}_marker.txt"
    shutil.copytree(default_encoder_dir(), folder)
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config_name = "tokenizer_config.json" if kind == "tokenizer" else "config.json"
    config = json.loads((folder / config_name).read_text())
    # Only the custom classes fit (no built-in model type or tokenizer class), so transformers would ask.
    if kind == "tokenizer":
        (folder / "config.json").unlink()
        config["tokenizer_class"] = "CustomTokenizer"
        config["auto_map"] = {"AutoTokenizer": ["custom.CustomTokenizer", "custom.CustomTokenizer"]}
    else:
        config["model_type"] = "custom-bert"
        config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    (folder / config_name).write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("kind", ["tokenizer", "encoder"])
def test_a_folder_with_custom_code_is_refused_without_a_prompt(tmp_path, kind):
    folder, marker = custom_code_folder(tmp_path, kind)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HUB_OFFLINE": "1"}
    # A person answering the prompt "y" (what a terminal would send): the answer must never be asked for.
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, kind, str(folder)], input="y\ny\ny\n",
                          capture_output=True, text=True, env=env, timeout=120)
    assert not marker.exists(), "the folder's python code ran"
    assert "[y/N]" not in done.stdout + done.stderr
    assert done.returncode == 3, done.stdout + done.stderr
    assert "trust_remote_code" in done.stdout and "custom code" in done.stdout
    setting = "tokenizer.name" if kind == "tokenizer" else "encoder.model"
    assert setting in done.stdout


def test_loaders_pass_trust_remote_code_explicitly():
    """Every from_pretrained / load_dataset call in gmates says trust_remote_code (never left to a prompt)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "gmates_assets").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("from_pretrained", "load_dataset") and not any(
                    k.arg == "trust_remote_code" for k in node.keywords):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)
