FROM habitus-examples/diamond-a
RUN echo "step b" > /b.txt && cat /a.txt /b.txt
