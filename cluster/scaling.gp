# Draws the scaling plot from the CSV written by cluster/scaling.
# gnuplot -e "csv='DIR/scaling.csv'; png='DIR/scaling.png'" cluster/scaling.gp
# Columns: 1 mode, 2 ranks, 3 global_batch, 4 samples_per_s, 5 efficiency,
#          6 t_compute, 7 t_exposed_comm, 8 t_step (seconds).
set terminal pngcairo size 1500,480 font "sans,10"
set output png
set datafile separator ","
set key top left Left reverse
set grid
set multiplot layout 1,3 title "ddp data-parallel scaling (MLP, fp32)"

is(m) = strcol(1) eq m
set title "throughput"
set xlabel "ranks"
set ylabel "samples/s"
set logscale x 2
set xtics (1, 2, 4, 8, 16, 32, 64)
set yrange [0:*]
# The ideal line: N times the throughput of the smallest run, i.e. sps / efficiency.
plot csv every ::1 using 2:(is("weak") ? $4 : 1/0) with linespoints lw 2 pt 7 title "weak", \
     csv every ::1 using 2:(is("weak") ? $4/$5 : 1/0) with lines dt 2 lc 1 title "weak ideal", \
     csv every ::1 using 2:(is("strong") ? $4 : 1/0) with linespoints lw 2 pt 5 lc 2 title "strong", \
     csv every ::1 using 2:(is("strong") ? $4/$5 : 1/0) with lines dt 2 lc 2 title "strong ideal"

set title "efficiency = throughput(N) / (N x throughput(1))"
set ylabel "efficiency"
set yrange [0:1.2]
plot csv every ::1 using 2:(is("weak") ? $5 : 1/0) with linespoints lw 2 pt 7 title "weak", \
     csv every ::1 using 2:(is("strong") ? $5 : 1/0) with linespoints lw 2 pt 5 lc 2 title "strong", \
     1 with lines dt 2 lc rgb "gray" title "ideal"

set title "per-step time: compute vs exposed communication"
unset logscale x
set xtics auto rotate by -30
set xlabel ""
set ylabel "ms per step"
set yrange [0:*]
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
plot csv every ::1 using ($6*1000):xtic(strcol(1)." np".strcol(2)) title "compute (fwd+bwd+optim)" lc rgb "#4477aa", \
     csv every ::1 using ($7*1000) title "exposed comm" lc rgb "#ee6677"
unset multiplot
