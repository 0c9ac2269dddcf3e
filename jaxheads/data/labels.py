"""The labels of jaxheads' labelled data: the guard's four tiers (docs/guard.md) and the response judge's four
labels (docs/judge.md), in the order every probability row and confusion matrix uses, and the columns that hold
them in a labelled file."""

GUARD_TIERS = ("safe", "conditionally_safe", "focused_attention", "unsafe")
SAFE, CONDITIONAL, FOCUSED, UNSAFE = GUARD_TIERS

JUDGE_LABELS = ("refusal", "harmful_compliance", "non_answer", "benign_answer")
REFUSAL, HARMFUL, NON_ANSWER, BENIGN = JUDGE_LABELS

LABEL_COLUMN = "tier"  # a guard-labelled file's tier column
JUDGE_LABEL_COLUMN = "label"  # a judge-labelled file's label column
RESPONSE_COLUMN = "response"  # the response of a (prompt, response) pair
