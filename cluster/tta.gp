# Plots cluster/tta's results: gnuplot -e "dir='OUT'" cluster/tta.gp -> OUT/tta.png
# Left: steps against samples to the target (medians over seeds), one curve per rank
# count, each point a batch size, the adaptive schedule as its own points. Middle: the
# training time to target against the batch at each rank count. Right: B_simple over the
# training of each fixed-batch run of one rank (seed 1), and the adaptive run's batch size.
set terminal pngcairo size 1800,560 font ",10"
set termoption noenhanced
set output dir."/tta.png"
set datafile separator whitespace
set multiplot layout 1,3
set logscale xy
set grid
set key top right
set title "Steps against samples to the target"
set xlabel "samples to target"
set ylabel "steps to target"
plot for [n in "1 2 4"] dir."/frontier.dat" using ((strcol(1) eq "fixed" && $2 == n+0 && $5 > 0) ? $7 : NaN):6 with linespoints pt 7 title "fixed, ".n." rank(s)", \
     for [n in "1 2 4"] "" using ((strcol(1) eq "fixed" && $2 == n+0 && $5 > 0) ? $7 : NaN):6:(sprintf("%d", $3)) with labels offset 1.5,0.6 notitle, \
     for [n in "1 2 4"] "" using ((strcol(1) eq "adaptive" && $2 == n+0 && $5 > 0) ? $7 : NaN):6 with points pt 5 ps 1.5 title "adaptive, ".n." rank(s)"
set title "Training time to the target"
set xlabel "global batch (adaptive: its start)"
set ylabel "seconds (evaluations excluded)"
set logscale x 2
plot for [n in "1 2 4"] dir."/frontier.dat" using ((strcol(1) eq "fixed" && $2 == n+0 && $5 > 0) ? $3 : NaN):8 with linespoints pt 7 title "fixed, ".n." rank(s)", \
     for [n in "1 2 4"] "" using ((strcol(1) eq "adaptive" && $2 == n+0 && $5 > 0) ? $3 : NaN):8 with points pt 5 ps 1.5 title "adaptive, ".n." rank(s)"
set title "Measured noise scale over training (1 rank, seed 1)"
set xlabel "samples trained"
set ylabel "B_simple, batch"
set logscale x 10
set logscale y 2
set datafile separator ","
set key top left
plot for [b in "16 64 256 1024 4096"] dir."/gns.csv" using ((strcol(1) eq "fixed" && $2 == 1 && $3 == b+0 && $4 == 1) ? $6 : NaN):8 with lines title "B_simple at batch ".b, \
     "" using ((strcol(1) eq "adaptive" && $2 == 1 && $4 == 1) ? $6 : NaN):7 with steps lw 2 lc rgb "black" title "adaptive batch"
unset multiplot
