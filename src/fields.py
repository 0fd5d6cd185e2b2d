"""Config dataclass fields that carry their command-line help next to their default."""

from dataclasses import MISSING, field, fields


def option(default, help: str):
    """A dataclass field with a default and the help text of its command-line flag."""
    return field(default=default, metadata={"help": help})


def field_help(config_class, name: str) -> tuple:
    """(help text, default) of field `name` of a dataclass built with `option`."""
    spec = next(f for f in fields(config_class) if f.name == name)
    default = spec.default if spec.default is not MISSING else None
    return spec.metadata.get("help", ""), default
