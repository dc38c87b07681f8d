"""`--NAME=value` command-line overrides of a script's UPPER_CASE constants, checked against their types."""

from __future__ import annotations

from src.errors import ProjectError

TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class ConfigError(ProjectError, ValueError):
    exit_code = 2  # a usage error, as argparse reports one


def parse_value(name: str, text: str, default):
    """Convert `text` to the type of `default`; a mismatch is an error naming the setting."""
    kind = type(default)
    try:
        if kind is bool:
            word = text.strip().lower()
            if word in TRUE_WORDS | FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        hint = "True or False" if kind is bool else f"a {kind.__name__}"
        raise ConfigError(f"--{name}={text}: expected {hint} (the default is {default!r})") from None


def apply_overrides(config: dict, args: list[str]) -> dict:
    """A copy of `config` with every `--NAME=value` in `args` applied."""
    config = dict(config)
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"expected --NAME=value, got {arg!r}")
        name, text = arg[2:].split("=", 1)
        if name not in config:
            valid = ", ".join(sorted(config))
            raise ConfigError(f"unknown setting {name!r}. Valid settings: {valid}")
        config[name] = parse_value(name, text, config[name])
    return config
