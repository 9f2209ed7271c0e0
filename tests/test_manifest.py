"""Build manifest: validation messages and semantic fingerprints."""
from pathlib import Path

import pytest

from gmates_assets.core.manifest import ManifestError, fingerprint, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = "name: t\nsources:\n  shards:\n    - {name: a, format: demo}\n"


@pytest.mark.parametrize("name", ["demo.yaml", "tests.yaml", "example_hub.yaml", "example_local.yaml"])
def test_shipped_manifests_validate(name):
    assert load_manifest(ROOT / "data_manifests" / name).manifest.sources.shards


def test_unknown_key_names_file_line_and_dotted_path():
    text = MINIMAL + "encoder:\n  model: x\n  poolng: mean\n"
    with pytest.raises(ManifestError) as err:
        parse_manifest(text, "m.yaml")
    assert "m.yaml:7: encoder.poolng: unknown key" in str(err.value)


def test_bad_value_names_field_and_expectation():
    with pytest.raises(ManifestError) as err:
        parse_manifest(MINIMAL + "selection:\n  ratio: 1.5\n", "m.yaml")
    message = str(err.value)
    assert "m.yaml:6: selection.ratio" in message and "less than or equal to 1" in message


def test_bad_list_item_is_located():
    with pytest.raises(ManifestError) as err:
        parse_manifest("name: t\nsources:\n  shards:\n    - {name: a, format: demo}\n    - {name: b, format: csv}\n", "m")
    assert "m:5: sources.shards.1.format" in str(err.value)


def test_cross_section_rule_is_explained():
    with pytest.raises(ManifestError, match="release.method 'mates' is not one of selection.methods"):
        parse_manifest(MINIMAL + "selection: {methods: [random]}\nrelease: {method: mates}\n", "m")


def test_fingerprint_ignores_key_order_float_format_and_volatile_fields():
    a = parse_manifest(MINIMAL + "encoder: {pooling: mean, batch_size: 64}\n").manifest
    b = parse_manifest(MINIMAL + "encoder: {batch_size: 64.0, pooling: mean, commit_every_docs: 7}\n").manifest
    assert fingerprint(a, "encoder") == fingerprint(b, "encoder")
    c = parse_manifest(MINIMAL + "probe: {optim: {lr: 0.003}}\n").manifest
    d = parse_manifest(MINIMAL + "probe: {optim: {lr: 3.0e-3}}\n").manifest
    assert fingerprint(c, "probe") == fingerprint(d, "probe")


def test_fingerprint_changes_with_a_semantic_value_and_only_its_section():
    a = parse_manifest(MINIMAL).manifest
    b = parse_manifest(MINIMAL + "encoder: {pooling: cls}\n").manifest
    assert fingerprint(a, "encoder") != fingerprint(b, "encoder")
    assert fingerprint(a, "tokenizer") == fingerprint(b, "tokenizer")
    assert fingerprint(a, "oracle.rollouts") == fingerprint(b, "oracle.rollouts")
