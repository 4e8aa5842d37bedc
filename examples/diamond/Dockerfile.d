FROM habitus-examples/diamond-b
COPY --from=habitus-examples/diamond-c /c.txt /c.txt
RUN cat /a.txt /b.txt /c.txt > /d.txt && cat /d.txt
CMD ["cat", "/d.txt"]
