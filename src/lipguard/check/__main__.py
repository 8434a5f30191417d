"""``python -m lipguard.check WEIGHTS CERTIFICATE``: exit 0 accepted, 1 rejected, 2 bad input."""

from __future__ import annotations

import sys

from lipguard.check.checker import CheckInputError, check


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: python -m lipguard.check WEIGHTS.safetensors CERTIFICATE.json", file=sys.stderr
        )
        return 2
    try:
        result = check(argv[0], argv[1])
    except CheckInputError as error:
        print(f"bad input: {error}", file=sys.stderr)
        return 2
    if result.accepted:
        lower = "" if result.lower is None else ", lower bound witnessed"
        print(f"accepted: ℓ{result.norm} Lipschitz upper bound {result.upper!r} proven{lower}")
        return 0
    for reason in result.reasons:
        print(f"rejected: {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
