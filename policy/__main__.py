"""The policy pack the Pulumi CLI runs (`--policy-pack policy`): every guardrail, mandatory."""

from guardrails import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="llm-serving-guardrails",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
