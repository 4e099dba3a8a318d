"""Reading options from a RecBole Config, with errors that name the option: shared by the run's
option checks (``recbole_endo.config``), the models' ``check_config``, the evaluation protocols'
options and the endo-synth generator's."""

import numbers


def number_option(config, name, low=None, high=None, low_open=False, integer=False, high_open=False):
    """``config[name]`` as a number within [low, high] (``low_open``: from above ``low``;
    ``high_open``: below ``high``), or a ValueError naming the option, the value and the allowed range."""
    value = config[name]
    kind = numbers.Integral if integer else numbers.Real
    in_range = (
        isinstance(value, kind)
        and not isinstance(value, bool)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if not in_range:
        bounds = (
            f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
            f"{'inf' if high is None else high}{')' if high_open else ']'}"
        )
        raise ValueError(
            f"config option '{name}' must be {'an integer' if integer else 'a number'} in {bounds}, "
            f"got {value!r} ({type(value).__name__})"
        )
    return value


def sizes_option(config, name, allow_empty=False):
    """``config[name]`` as a list of positive layer sizes, or a ValueError naming the option."""
    value = config[name]
    if (
        not isinstance(value, list)
        or (not value and not allow_empty)
        or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in value)
    ):
        raise ValueError(f"config option '{name}' must be a list of positive integers, got {value!r}")
    return value


def check_raw_ratings(config, name):
    """Fail when option ``name`` compares ratings that RecBole min-max normalises to [0, 1]
    (``normalize_all``, or the rating in ``normalize_field``): every threshold would silently
    compare against a rating below 1."""
    rating = config["RATING_FIELD"]
    if config["normalize_all"] or rating in (config["normalize_field"] or []):
        raise ValueError(
            f"config option '{name}' compares raw ratings, but RecBole normalises the rating field "
            f"'{rating}' to [0, 1] (normalize_all / normalize_field): set normalize_all: False, or "
            "leave the rating out of normalize_field"
        )


def numbers_option(config, name):
    """``config[name]`` as a (possibly empty) list of numbers, or a ValueError naming the option."""
    value = config[name]
    if not isinstance(value, list) or not all(
        isinstance(number, numbers.Real) and not isinstance(number, bool) for number in value
    ):
        raise ValueError(f"config option '{name}' must be a list of numbers, got {value!r}")
    return value


def choice_option(config, name, choices):
    """``config[name]``, one of ``choices``, or a ValueError naming the option and the choices."""
    value = config[name]
    if value not in choices:
        raise ValueError(f"config option '{name}' must be {' or '.join(choices)}, got {value!r}")
    return value
