FROM habitus-examples/uid-base
CMD ["cat", "/app/revision"]
