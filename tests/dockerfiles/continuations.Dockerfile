# a comment before anything
FROM myorg/base AS build
RUN apt-get update \
# a comment between continuation lines
    && apt-get install -y make \

    && make
COPY --from=myorg/app_compile \
     /out /out
FROM myorg/\
app:1.0
RUN echo "a \\" && \
    echo b
LABEL x="y" \   
      z=1
ONBUILD COPY --from=compile / /
  copy --from=compile /a /a
COPY --from="compile" /b /b
