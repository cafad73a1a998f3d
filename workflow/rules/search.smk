# The runs compared: leaderboard.csv (ranked by best validation loss; failed runs marked), curves.png
# (validation loss per epoch) and runs.csv (run id -> its point of the search space). Both the
# table and the plot go into `snakemake --report results/{experiment}/report.html`.


localrules:
    leaderboard,


rule leaderboard:
    input:
        statuses=expand(run_path("status.json"), run=RUNS),
        metrics=expand(run_path("metrics.csv"), run=RUNS),
        models=expand(run_path("models"), run=RUNS),
    output:
        table=report(f"{RESULTS}/leaderboard.csv", caption="../report/leaderboard.rst", category="Search"),
        plot=report(f"{RESULTS}/curves.png", caption="../report/curves.rst", category="Search"),
        runs=f"{RESULTS}/runs.csv",
    log:
        f"{LOGS}/leaderboard/leaderboard.log",
    run:
        write_leaderboard(output, log[0])
