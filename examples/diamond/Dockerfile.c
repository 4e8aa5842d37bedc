FROM habitus-examples/diamond-a
RUN echo "step c" > /c.txt && cat /a.txt /c.txt
