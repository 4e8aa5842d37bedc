# syntax=docker/dockerfile:1
# check=skip=JSONArgsRecommended

# escape=`
FROM localhost:5000/tools AS tools
RUN echo a \
    b
COPY --from=tools /x /x
COPY --from=localhost:5000/tools:latest /y /y
