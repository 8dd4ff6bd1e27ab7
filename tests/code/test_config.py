"""config/routing.yaml validation: errors name the key and say what to fix."""
from __future__ import annotations

import pytest
import yaml

from escalation.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT


def mutate(**changes) -> bytes:
    cfg = yaml.safe_load((ROOT / "config" / "routing.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return yaml.safe_dump(cfg).encode()


def test_shipped_configs_load_and_describe_both_plans():
    hybrid, version = load_config(ROOT / "config" / "routing.yaml")
    assert version.startswith("hybrid-2026-11+")
    for role in ("architect", "orchestrator", "implementer", "critic", "integrator"):
        assert hybrid.chain_for(role, False) == ["z-ai/glm-4.5", "openrouter/sonoma-sky-alpha", "meta-llama/llama-3.2-3b-instruct:free"]
        assert hybrid.chain_for(role, True)[0] == "anthropic/claude-opus-4.1"
    previous, _ = load_config(ROOT / "config" / "previous_landscape.yaml")
    assert previous.chain_for("integrator", True) == ["openai/gpt-5"]
    assert previous.chain_for("critic", False) == ["openrouter/sonoma-sky-alpha", "meta-llama/llama-3.2-3b-instruct:free"]


@pytest.mark.parametrize("changes, message", [
    ({"providers.openrouter.api_key_env": "sk-or-v1-abc123"}, "must be the NAME of an environment variable"),
    ({"models.openai/gpt-5.provider": "nowhere"}, "is not under providers"),
    ({"roles.critic": None}, "roles lacks critic"),
    ({"roles.architect.chain": ["gpt-9"]}, "names 'gpt-9', which is not under models"),
    ({"escalation.critical_model": "opus-9"}, "is not under models"),
    ({"budget.share": 1.5}, "budget.share"),
    ({"providers.openrouter.base_url": "openrouter.ai"}, "must start with http"),
    ({"review.store_text": "maybe"}, "review.store_text"),
])
def test_invalid_config_names_the_problem(changes, message):
    with pytest.raises(ConfigError, match="invalid") as err:
        parse_config(mutate(**changes), "routing.yaml")
    assert message in str(err.value)


def test_not_yaml_and_missing_file():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(b"roles: [unclosed", "x.yaml")
    with pytest.raises(ConfigError, match="pass --config with an existing file"):
        load_config(ROOT / "config" / "nope.yaml")
