"""What a notebook's training cells are allowed and expected to do.

``switches``: the environment switches (``D2L_VIT_QUICK``, ``D2L_VIT_OFFLINE``);
``quick_mode``: the run size of a training cell; ``saved_params``: trained
parameters saved with the settings that decided them; ``reference_runs``: the
full-setting runs recorded once and shown beside each build's own run.
"""
