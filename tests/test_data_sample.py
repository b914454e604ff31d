"""sample_text: stops at end-of-text, refuses meaningless settings and foreign tokenizers."""

import pytest
import torch

from helpers import write_byte_dataset
from oneepoch import sample as sample_mod
from oneepoch.config import RunConfig
from oneepoch.data.dataset import read_manifest
from oneepoch.errors import UserError


class ScriptedModel:
    """Emits the given token ids one after another, whatever it is asked."""

    def __init__(self, script):
        self.script = list(script)

    def generate(self, idx, n, temperature, top_k):
        assert n == 1
        return torch.cat([idx, torch.tensor([[self.script.pop(0)]])], dim=1)


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    data = write_byte_dataset(tmp_path / "data", b"some text for a tiny dataset " * 20)
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.model.vocab_size = 257

    own = read_manifest(data)["tokenizer"]["sha256"]

    def use(script, sha=own):
        model = ScriptedModel(script)
        monkeypatch.setattr(sample_mod, "_config", lambda run: cfg)
        monkeypatch.setattr(
            sample_mod, "_load", lambda run: (model, cfg, {"tokenizer_sha256": sha})
        )

    return use


def test_stops_at_end_of_text_unless_asked_to_go_on(scripted):
    hi, eot = [ord("h"), ord("i")], 256
    scripted([*hi, eot, ord("!")])
    assert sample_mod.sample_text("run", "", max_new_tokens=10) == "hi"
    scripted([*hi, eot, ord("!")])
    assert sample_mod.sample_text("run", ">", max_new_tokens=10) == ">hi"
    scripted([*hi, eot, ord("!")])
    text = sample_mod.sample_text("run", "", max_new_tokens=4, past_eot=True)
    assert text.startswith("hi") and text.endswith("!") and len(text) > 3


def test_refuses_a_dataset_with_another_tokenizer(scripted):
    scripted([1], sha="0" * 64)
    with pytest.raises(UserError, match="another tokenizer than the one run"):
        sample_mod.sample_text("run", "x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=float("nan")), "not a finite number"),
        (dict(temperature=float("inf")), "not a finite number"),
        (dict(temperature=-1.0), "negative"),
        (dict(max_new_tokens=-5), "asks for no text"),
        (dict(max_new_tokens=0), "asks for no text"),
        (dict(top_k=-1), "--top-k -1"),
    ],
)
def test_meaningless_settings_are_refused_before_loading(kwargs, message):
    with pytest.raises(UserError, match=message):
        sample_mod.sample_text("/no/such/run", "x", **kwargs)
