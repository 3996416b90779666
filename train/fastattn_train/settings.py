"""Pre-training configs by name or path, with command-line overrides.

`pretrain_config("tiny", ["model.attention=strided", "max_steps=100"])` reads the bundled
configs/tiny.yaml (or a YAML file given by path), applies each KEY=VALUE (dotted for the
model, optim and masking sections; the value read as YAML) and checks the result as
`fastattn_train.pretrain.config_from_dict` does, so a misspelt key is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fastattn_train.pretrain import PretrainConfig, config_from_dict

BUNDLED = Path(__file__).parent / "configs"


def bundled_names() -> list[str]:
    return sorted(path.stem for path in BUNDLED.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """The YAML file a config name (tiny, paper) or path stands for."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    bundled = BUNDLED / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ValueError(f"config must be a YAML file or one of {', '.join(bundled_names())}, got {name_or_path!r}")
    return bundled


def pretrain_config(name_or_path: str | Path, overrides: list[str] = ()) -> PretrainConfig:
    path = config_path(name_or_path)
    values = yaml.safe_load(path.read_text()) or {}
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise ValueError(f"an override must be KEY=VALUE (e.g. model.attention=strided), got {override!r}")
        *sections, leaf = key.split(".")
        target = values
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {override!r}: {section!r} is not a section of the config")
        target[leaf] = _value(text)
    return config_from_dict(values, source=f"{path} with {', '.join(overrides) or 'no overrides'}")


def _value(text: str):
    """`text` read as YAML, except that a number in exponent form without a dot (1e-4),
    which YAML 1.1 reads as a string, is a number."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value
