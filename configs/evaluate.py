"""Defaults of `jaxheads evaluate`: attack success rate with chosen heads ablated."""

from jaxheads.configs import common

get_config, HELP = common.command(
    common.MODEL + common.PROMPTS + common.ABLATION + common.GENERATION,
    defaults={"dataset": "builtin:harmful:heldout"},
    ablate=("", "Heads ablated for every prompt, as layer:head pairs, e.g. 2:3,10:0."),
    ablate_from=("", "A sahara.json whose chosen heads are ablated (added to --ablate)."),
    top_k_from=("", "A ships.json: ablate each of its prompts' own top_k heads (its prompts replace --dataset)."),
    top_k=(1, "With --top_k_from: heads ablated per prompt."),
    guard=("", "Guard the model's input: builtin (the guard shipped for the default model) or a `jaxheads guard "
               "train` folder; Unsafe prompts get a refusal without running the model, Conditionally Safe ones a "
               "safety note after the request, Focused Attention ones are flagged; empty = no guard."),
    screen=(True, "With --guard: screen each answer with the response judge (--judge=guard|DIR, else the shipped one "
                  "when it fits the guard's model) and withhold those it labels harmful compliance; false = no "
                  "screening (the shipped judge also withholds about one harmless answer in five, docs/guard.md)."),
    out=("runs/evaluate", "Output folder."),
)
