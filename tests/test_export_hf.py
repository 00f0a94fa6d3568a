"""Export to Hugging Face transformers: tiny GPT-2- and Llama-style runs load offline in
transformers and give the same logits and token IDs as the app; other options are refused by name."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmstudio_app.config import config_from_dict
from lmstudio_app.errors import ExportError
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs.export_hf import export_run, hf_family
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.loading import load_run
from lmstudio_app.training.trainer import Trainer

GPT2 = {"positional": "learned", "norm": "layernorm", "mlp": "gelu"}
LLAMA = {"positional": "rotary", "norm": "rmsnorm", "mlp": "swiglu"}
# (tokenizer, model options): both families, with and without biases and weight tying.
CASES = {
    "gpt2-char-tied": ("char", {**GPT2}),
    "gpt2-bpe-bias-untied": ("bpe", {**GPT2, "bias": True, "tie_weights": False, "mlp_ratio": 2.5}),
    "llama-byte-tied": ("byte", {**LLAMA}),
    "llama-word-bias-untied": ("word", {**LLAMA, "bias": True, "tie_weights": False}),
}
SAMPLES = ["the cat sees a mouse.\nA dog  likes the ball!", "zebra € ünïcode\t\n\nthe", ""]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = random.Random(0)
    subjects, verbs = ["the cat", "a dog", "my bird"], ["sees", "likes", "chases"]
    objects = ["the ball", "a mouse"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(200)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def gpt_config(corpus_file, tokenizer="char", **model):
    tok = {"plugin": tokenizer, **({"vocab_size": 280} if tokenizer == "bpe" else {})}
    gpt = {"plugin": "gpt", "n_layer": 2, "n_embd": 32, "n_head": 4, "context_length": 16, **model}
    train = {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": 2,
             "eval_interval": 2, "log_interval": 1, "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 1}
    data = {"files": [str(corpus_file)]}
    return config_from_dict({"data": data, "tokenizer": tok, "model": gpt, "train": train}, "test")


def trained_run(path, registry, config):
    """Train two steps, then shake every weight (norm gains and zero biases too) and save again,
    so that a weight put in the wrong place or transposed changes the logits."""
    trainer = Trainer(config, registry, path)
    trainer.run()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    trainer.save_checkpoint()
    return path


@pytest.fixture
def transformers():
    return pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'lmstudio-app[test]')"
    )


@pytest.mark.parametrize("case", CASES)
def test_export_loads_in_transformers_with_the_same_logits_and_token_ids(
    case, transformers, registry, corpus_file, tmp_path
):
    tokenizer_name, options = CASES[case]
    run = trained_run(tmp_path / "run", registry, gpt_config(corpus_file, tokenizer_name, **options))
    out = export_run(run, tmp_path / "hf", registry)

    assert sorted(p.name for p in out.iterdir()) == [
        ".lmstudio-export.json", "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    expected = "GPT2LMHeadModel" if case.startswith("gpt2") else "LlamaForCausalLM"
    assert type(hf_model).__name__ == expected
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf_model.eval()

    _, ours, tokenizer = load_run(run, registry, device="cpu")
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, ours.vocab_size, (4, ours.context_length), generator=gen)
    with torch.no_grad():
        want = ours(prompts)
        got = hf_model(prompts).logits
    assert want.abs().max() > 1.0, "logits too small to show a misplaced weight"
    diff = (want - got).abs().max().item()
    print(f"{case}: max |logit difference| = {diff:.3g}")
    assert diff <= TOLERANCE

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.decode(ids) == tokenizer.decode(ids)
    assert hf_model.generation_config.max_length == ours.context_length


def test_config_json_records_the_architecture_choices(registry, corpus_file, tmp_path):
    run = trained_run(tmp_path / "run", registry,
                      gpt_config(corpus_file, "byte", **LLAMA, bias=True, tie_weights=False))
    out = export_run(run, tmp_path / "hf", registry)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (32, 4, 8)
    assert config["rms_norm_eps"] == 1e-6 and config["rope_theta"] == 10000.0
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    assert config["tie_word_embeddings"] is False
    eos = config["eos_token_id"]
    assert eos == 256 and config["bos_token_id"] == 256  # the byte tokenizer's <|endoftext|>
    tok_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_config["eos_token"] == "<|endoftext|>"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mlp": "relu2"}, ("model.mlp = 'relu2' has no transformers equivalent "
                            "(GPT-2 style needs gelu, Llama style needs swiglu)")),
        ({**LLAMA, "qk_norm": True}, "model.qk_norm = true has no transformers equivalent"),
        ({"logit_softcap": 30.0}, "model.logit_softcap = 30.0 has no transformers equivalent"),
        ({"norm": "rmsnorm"}, "model.norm = 'rmsnorm' with positional = 'learned' has no transformers"),
        ({"mlp": "swiglu"}, "model.mlp = 'swiglu' with positional = 'learned' has no transformers"),
        ({**LLAMA, "norm": "layernorm"}, "model.norm = 'layernorm' with positional = 'rotary'"),
        ({**LLAMA, "mlp": "gelu"}, "model.mlp = 'gelu' with positional = 'rotary'"),
    ],
)
def test_options_without_a_transformers_equivalent_are_named(options, message, registry, corpus_file):
    with pytest.raises(ExportError) as info:
        hf_family(gpt_config(corpus_file, **options), registry)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_supported_options_map_to_gpt2_or_llama(registry, corpus_file):
    assert hf_family(gpt_config(corpus_file), registry) == "gpt2"
    assert hf_family(gpt_config(corpus_file, **LLAMA, bias=True, dropout=0.1), registry) == "llama"
    assert hf_family(gpt_config(corpus_file, zero_init_proj=True, tie_weights=False), registry) == "gpt2"


def test_a_non_gpt_run_and_an_unknown_format_are_refused_before_any_work(registry, corpus_file, tmp_path):
    config = gpt_config(corpus_file)
    bigram = config_from_dict({**config.to_dict(), "model": {"plugin": "bigram"}}, "test")
    RunDir.create(tmp_path / "bigram", bigram)
    with pytest.raises(ExportError, match=r"model.plugin = 'bigram' has no transformers export"):
        export_run(tmp_path / "bigram", tmp_path / "out", registry)
    with pytest.raises(ExportError, match=r"--format 'gguf': unknown export format \(formats: hf\)"):
        export_run(tmp_path / "bigram", tmp_path / "out", registry, fmt="gguf")
    assert not (tmp_path / "out").exists()


def test_output_folder_must_be_new_empty_or_an_earlier_export(registry, corpus_file, tmp_path):
    run = trained_run(tmp_path / "run", registry, gpt_config(corpus_file))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match="folder is not empty"):
        export_run(run, other, registry)
    with pytest.raises(ExportError, match=r"not an earlier export \(no .lmstudio-export.json marker\)"):
        export_run(run, other, registry, overwrite=True)
    assert (other / "todo.txt").read_text(encoding="utf-8") == "keep me"

    out = export_run(run, tmp_path / "hf", registry)
    (out / "stale.txt").write_text("from before", encoding="utf-8")
    export_run(run, out, registry, overwrite=True)
    # Only the export's own files are replaced: a file the person put beside them stays.
    assert (out / "stale.txt").read_text(encoding="utf-8") == "from before" and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes", "run"]
