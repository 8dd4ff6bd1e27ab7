"""config/routing.yaml: roles, models, chains, prices, budget and policies, validated at start.

Every error names the key and says what to change. API keys never live in this file: a provider names
the *environment variable* that holds its key.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from escalation.schema import ROLES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provider(Strict):
    base_url: str
    api_key_env: str = Field(description="name of the environment variable that holds the key")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError(f"base_url {v!r} must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (like OPENROUTER_API_KEY), "
                "never the key itself; export the key in that variable"
            )
        return v


class ModelSpec(Strict):
    provider: str
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    context_window: int = Field(gt=0)
    timeout_s: float = Field(default=60, gt=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6


class RolePolicy(Strict):
    chain: list[str] = Field(min_length=1)
    critical_chain: Optional[list[str]] = Field(default=None, description="default: critical model, then chain")
    allow_force: bool = True
    allow_forbid: bool = True


class Controller(Strict):
    mode: Literal["hard", "soft", "off"] = "hard"
    window: int = Field(default=1000, ge=50)
    min_samples: int = Field(default=200, ge=10)
    gain: float = Field(default=1.0, ge=0, le=5, description="how strongly to pay back past over/under-spend")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false


class Budget(Strict):
    share: float = Field(default=0.05, gt=0, lt=1)
    prior: float = Field(default=0.05, gt=0, lt=1)
    controller: Controller = Controller()


class Escalation(Strict):
    enabled: bool = Field(default=True, description="false: classify and log, but never route to the critical model")
    critical_model: str
    daily_spend_cap_usd: float = Field(default=50.0, ge=0)
    on_classifier_failure: Literal["fail_cheap", "fail_expensive"] = "fail_cheap"


class Circuit(Strict):
    failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=30.0, ge=0)


class Retry(Strict):
    attempts_per_model: int = Field(default=2, ge=1, le=5)
    backoff_s: float = Field(default=0.2, ge=0)
    max_backoff_s: float = Field(default=2.0, ge=0)
    circuit: Circuit = Circuit()


class Review(Strict):
    band: float = Field(default=0.5, gt=0, description="log-odds distance from the threshold that counts as borderline")
    sample_rate: float = Field(default=0.01, ge=0, le=1)
    store_text: Literal["full", "redacted", "off"] = "full"


class Canary(Strict):
    enabled: bool = False
    share: float = Field(default=0.1, ge=0, le=1)
    config: Optional[str] = Field(default=None, description="candidate routing config file")
    model_uri: Optional[str] = None
    min_requests: int = Field(default=20, ge=1)
    max_error_rate_delta: float = 0.2
    max_fallback_rate_delta: float = 0.3
    max_latency_ratio: float = 3.0
    max_escalation_rate_delta: float = 0.05


class Shadow(Strict):
    enabled: bool = False
    model_uri: str = "models:/escalation-classifier@challenger"


class Classifier(Strict):
    model_uri: str = "models:/escalation-classifier@champion"
    reload_poll_s: float = Field(default=0, ge=0, description="0 = reload only through the admin endpoint")
    neighbours: int = Field(default=3, ge=0, le=10)


class RoutingConfig(Strict):
    version: str = Field(description="a name for this file's content; the service adds a hash")
    providers: dict[str, Provider]
    models: dict[str, ModelSpec]
    roles: dict[str, RolePolicy]
    escalation: Escalation
    budget: Budget = Budget()
    retry: Retry = Retry()
    review: Review = Review()
    canary: Canary = Canary()
    shadow: Shadow = Shadow()
    classifier: Classifier = Classifier()
    admin_token_env: str = "ESCALATION_ADMIN_TOKEN"

    @model_validator(mode="after")
    def _cross_references(self) -> "RoutingConfig":
        problems = []
        for mid, m in self.models.items():
            if m.provider not in self.providers:
                problems.append(f"models.{mid}.provider {m.provider!r} is not under providers ({', '.join(self.providers)})")
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            problems.append(f"roles lacks {', '.join(missing)}; every role needs a chain")
        for r in self.roles:
            if r not in ROLES:
                problems.append(f"roles.{r} is not a role (expected {', '.join(ROLES)})")
        if self.escalation.critical_model not in self.models:
            problems.append(f"escalation.critical_model {self.escalation.critical_model!r} is not under models")
        for r, policy in self.roles.items():
            for key in ("chain", "critical_chain"):
                for mid in getattr(policy, key) or []:
                    if mid not in self.models:
                        problems.append(f"roles.{r}.{key} names {mid!r}, which is not under models")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def chain_for(self, role: str, critical: bool) -> list[str]:
        policy = self.roles[role]
        if not critical or not self.escalation.enabled:
            return list(policy.chain)
        if policy.critical_chain:
            return list(policy.critical_chain)
        critical_model = self.escalation.critical_model
        return [critical_model] + [m for m in policy.chain if m != critical_model]


class ConfigError(ValueError):
    pass


def load_config(path: str | Path) -> tuple[RoutingConfig, str]:
    """Returns the validated config and its version: `<version>+<sha256 of the file, 10 chars>`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config with an existing file") from None
    return parse_config(raw, str(path))


def parse_config(raw: bytes, source: str = "config") -> tuple[RoutingConfig, str]:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        cfg = RoutingConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    return cfg, f"{cfg.version}+{hashlib.sha256(raw).hexdigest()[:10]}"
