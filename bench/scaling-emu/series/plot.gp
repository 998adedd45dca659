set terminal pngcairo size 1600,1000 font "sans,10"
set output 'scaling-emu.png'
set grid
set key top left Left reverse
set multiplot layout 2,3 title "ddp-bench train, MLP 784-1024-1024-10 fp32, emulated nodes (one rank each, all on one 2-core machine)"
set logscale x 2
set xtics (1, 2, 4)
set xlabel "nodes"
set title "weak scaling (128 samples/rank): throughput"
set ylabel "samples/s"
set yrange [0:*]
plot 'series/1gbit-default-weak.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#cc3311' dt 1 title '1gbit', \
     'series/1gbit-default-weak.dat' using 1:4 with lines dt 2 lc rgb '#cc3311' title '1gbit ideal', \
     'series/10gbit-default-weak.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#0077bb' dt 1 title '10gbit', \
     'series/10gbit-default-weak.dat' using 1:4 with lines dt 2 lc rgb '#0077bb' title '10gbit ideal', \
     'series/unshaped-default-weak.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#009988' dt 1 title 'unshaped', \
     'series/unshaped-default-weak.dat' using 1:4 with lines dt 2 lc rgb '#009988' title 'unshaped ideal', \
     'series/1gbit-ring-weak.dat' using 1:2 with linespoints lw 2 pt 5 lc rgb '#cc3311' dt 4 title '1gbit ring', \
     'series/1gbit-rd-weak.dat' using 1:2 with linespoints lw 2 pt 9 lc rgb '#cc3311' dt 5 title '1gbit rd'
set title "weak scaling: efficiency = sps(N)/(N sps(1))"
set ylabel "efficiency"
set yrange [0:1.1]
plot 'series/1gbit-default-weak.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#cc3311' dt 1 title '1gbit', \
     'series/10gbit-default-weak.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#0077bb' dt 1 title '10gbit', \
     'series/unshaped-default-weak.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#009988' dt 1 title 'unshaped', \
     'series/1gbit-ring-weak.dat' using 1:3 with linespoints lw 2 pt 5 lc rgb '#cc3311' dt 4 title '1gbit ring', \
     'series/1gbit-rd-weak.dat' using 1:3 with linespoints lw 2 pt 9 lc rgb '#cc3311' dt 5 title '1gbit rd', \
     1 with lines dt 2 lc rgb 'gray' title 'ideal'
set title "strong scaling (global batch 512): throughput"
set ylabel "samples/s"
set yrange [0:*]
plot 'series/1gbit-default-strong.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#cc3311' dt 1 title '1gbit', \
     'series/1gbit-default-strong.dat' using 1:4 with lines dt 2 lc rgb '#cc3311' title '1gbit ideal', \
     'series/10gbit-default-strong.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#0077bb' dt 1 title '10gbit', \
     'series/10gbit-default-strong.dat' using 1:4 with lines dt 2 lc rgb '#0077bb' title '10gbit ideal', \
     'series/unshaped-default-strong.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '#009988' dt 1 title 'unshaped', \
     'series/unshaped-default-strong.dat' using 1:4 with lines dt 2 lc rgb '#009988' title 'unshaped ideal', \
     'series/1gbit-ring-strong.dat' using 1:2 with linespoints lw 2 pt 5 lc rgb '#cc3311' dt 4 title '1gbit ring', \
     'series/1gbit-rd-strong.dat' using 1:2 with linespoints lw 2 pt 9 lc rgb '#cc3311' dt 5 title '1gbit rd'
set title "strong scaling: efficiency"
set ylabel "efficiency"
set yrange [0:1.1]
plot 'series/1gbit-default-strong.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#cc3311' dt 1 title '1gbit', \
     'series/10gbit-default-strong.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#0077bb' dt 1 title '10gbit', \
     'series/unshaped-default-strong.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#009988' dt 1 title 'unshaped', \
     'series/1gbit-ring-strong.dat' using 1:3 with linespoints lw 2 pt 5 lc rgb '#cc3311' dt 4 title '1gbit ring', \
     'series/1gbit-rd-strong.dat' using 1:3 with linespoints lw 2 pt 9 lc rgb '#cc3311' dt 5 title '1gbit rd', \
     1 with lines dt 2 lc rgb 'gray' title 'ideal'
unset logscale x
set multiplot next
set origin 0.333,0
set size 0.667,0.5
set title "per-step time (median run): compute (fwd+bwd), optimizer, exposed communication"
set xlabel ""
set ylabel "ms per step"
set yrange [0:*]
set xtics auto rotate by -45 font ",8"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
plot 'series/bars.dat' using 2:xtic(1) title "fwd+bwd" lc rgb "#4477aa", \
     '' using 3 title "optimizer" lc rgb "#ccbb44", \
     '' using 4 title "exposed comm" lc rgb "#ee6677"
unset multiplot
