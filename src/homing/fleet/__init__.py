"""Fleet-level tools: the demo (``homing demo``) and the simulator (``homing simulate``)."""

# The strategies `homing simulate` compares, in the order it reports them.
# Kept here, free of heavy imports, so the CLI can offer them without
# loading the simulator; homing.fleet.strategies registers exactly these.
STRATEGY_NAMES = (
    "leaf-fingerprint",
    "announce-next",
    "public-ca",
    "hpkp",
    "private-ca",
    "firmware-pins",
    "homing",
    "homing-public-ca",
)

__all__ = ["STRATEGY_NAMES"]
