"""The textbook recipes as measured: every `docs/results/<recipe>/seed<N>/results.json`
against the figure its source reported (the "Reported: x%" of conf/experiment/<recipe>.yaml).
`python -m cnnbench.report --recipes docs/results` prints the table the README carries."""

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from cnnbench.config import CONFIG_DIR
from cnnbench.errors import ConfigError

REPORTED = re.compile(r"Reported: ([\d.]+)%")


@dataclass
class Recipe:
    name: str  # experiment=<name>
    folder: Path
    reported: float | None  # a fraction, as test_acc
    finals: list[float] = field(default_factory=list)  # test_acc after the last epoch, by seed
    bests: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    # the engine's switches that a textbook run does not use, e.g. bf16, channels-last, and
    # cuda where it trained on a GPU
    switches: set[str] = field(default_factory=set)

    @property
    def median(self) -> float:
        return statistics.median(self.finals)

    @property
    def gap(self) -> float | None:
        """Points between the median and the reported figure; positive: above it."""
        return None if self.reported is None else 100 * (self.median - self.reported)


def reported(name: str) -> float | None:
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"{name} is not a recipe: there is no conf/experiment/{name}.yaml")
    found = REPORTED.search(path.read_text())
    return float(found.group(1)) / 100 if found else None


def collect(root: Path) -> list[Recipe]:
    """Each recipe with a finished run under root, in name order; a run is
    <root>/<recipe>/seed<N>/results.json with status ok."""
    recipes: dict[str, Recipe] = {}
    for path in sorted(root.glob("**/seed*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") != "ok":
            continue
        folder = path.parent.parent
        name = folder.relative_to(root).as_posix()
        recipe = recipes.setdefault(name, Recipe(name, folder, reported(name)))
        recipe.finals.append(results["test_acc"])
        recipe.bests.append(results["best_test_acc"])
        recipe.seeds.append(results["config"]["trainer"]["seed"])
        trainer = results["config"]["trainer"]
        if str(trainer["precision"]) != "32":
            recipe.switches.add(str(trainer["precision"]))
        if trainer.get("channels_last"):
            recipe.switches.add("channels-last")
        if str(results.get("device", "cpu")).startswith("cuda"):
            recipe.switches.add("cuda")
    return [recipes[k] for k in sorted(recipes)]


def figure(recipe: Recipe) -> str:
    """The README's cnnbench cell: one seed's final (and best) accuracy, or the median and
    range over the seeds."""
    if len(recipe.finals) == 1:
        final, best = recipe.finals[0], recipe.bests[0]
        text = f"{final:.2%}" + (f" (best {best:.2%})" if best != final else "")
    else:
        low, high = min(recipe.finals), max(recipe.finals)
        text = f"{recipe.median:.2%} ({low:.2%} to {high:.2%}, {len(recipe.finals)} seeds)"
    if recipe.switches:
        text += f", {' '.join(sorted(recipe.switches))}"
    return text


def table(recipes: list[Recipe], link: str = "docs/results") -> str:
    lines = ["| experiment | reported | cnnbench | gap |", "| --- | --- | --- | --- |"]
    for r in recipes:
        reported_ = "none" if r.reported is None else f"{r.reported:.2%}"
        gap = "" if r.gap is None else f"{r.gap:+.1f}"
        lines.append(f"| `{r.name}` | {reported_} | [{figure(r)}]({link}/{r.name}/) | {gap} |")
    return "\n".join(lines) + "\n"
