# Draws the scaling plot from the CSV written by cluster/scaling.
# gnuplot -e "csv='DIR/scaling.csv'; png='DIR/scaling.png'; variants='a b'" cluster/scaling.gp
# Columns: 1 mode, 2 ranks, 3 global_batch, 4 samples_per_s, 5 efficiency,
#          6 t_compute, 7 t_exposed_comm, 8 t_step (seconds), ..., 15 variant.
# variants: the names in column 15, one line each (default: "default").
if (!exists("variants")) variants = "default"
nv = words(variants)
set terminal pngcairo size 1500,480 font "sans,10"
set output png
set datafile separator ","
set key top left Left reverse
set grid
set multiplot layout 1,3 title "ddp data-parallel scaling (MLP, fp32)"

# Row of mode m and variant v (files without column 15 are one variant).
is(m, v) = strcol(1) eq m && (nv == 1 || strcol(15) eq v)
name(m, v) = nv == 1 ? m : v." ".m
set title "throughput"
set xlabel "ranks"
set ylabel "samples/s"
set logscale x 2
set xtics (1, 2, 4, 8, 16, 32, 64)
set yrange [0:*]
# The ideal line: N times the throughput of the smallest run, i.e. sps / efficiency.
plot for [i=1:nv] csv every ::1 using 2:(is("weak", word(variants, i)) ? $4 : 1/0) \
         with linespoints lw 2 pt 7 lc i title name("weak", word(variants, i)), \
     for [i=1:nv] csv every ::1 using 2:(is("weak", word(variants, i)) ? $4/$5 : 1/0) \
         with lines dt 2 lc i notitle, \
     for [i=1:nv] csv every ::1 using 2:(is("strong", word(variants, i)) ? $4 : 1/0) \
         with linespoints lw 2 pt 5 lc i + nv title name("strong", word(variants, i)), \
     for [i=1:nv] csv every ::1 using 2:(is("strong", word(variants, i)) ? $4/$5 : 1/0) \
         with lines dt 2 lc i + nv notitle

set title "efficiency = throughput(N) / (N x throughput(1))"
set ylabel "efficiency"
set yrange [0:1.2]
plot for [i=1:nv] csv every ::1 using 2:(is("weak", word(variants, i)) ? $5 : 1/0) \
         with linespoints lw 2 pt 7 lc i title name("weak", word(variants, i)), \
     for [i=1:nv] csv every ::1 using 2:(is("strong", word(variants, i)) ? $5 : 1/0) \
         with linespoints lw 2 pt 5 lc i + nv title name("strong", word(variants, i)), \
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
label(i) = (nv == 1 ? "" : strcol(15)." ").strcol(1)." np".strcol(2)
plot csv every ::1 using ($6*1000):xtic(label(0)) title "compute (fwd+bwd+optim)" lc rgb "#4477aa", \
     csv every ::1 using ($7*1000) title "exposed comm" lc rgb "#ee6677"
unset multiplot
