"""The validation benchmark: contenders against ceilings from the synthetic cohort's truth (``omnimodal-benchmark``)."""
