"""Looking at a run: only reads its files, never runs a model.

    summary     run files -> numbers (shared by the two views below)
    inspection  the terminal view (`selfreward inspect`)
    report      one HTML page (`selfreward report`)

May import `artifacts`, `errors` and `stats` only: what it shows is what the files say.
"""
