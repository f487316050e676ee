"""The statistics both the driver and the analysis use, below both.

    sequential  the stopping rule for a claim answered by paired seeds (numpy and scipy only:
                the driver calls it after every round)
    intervals   range-respecting intervals, paired and two-sample tests, Holm, power
"""
