FROM compile
# café
LABEL note="café" \
      other=ÿ
RUN --mount=type=cache,from=compile,target=/c true
