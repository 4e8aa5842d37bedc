# escape=`
FROM myorg/app_compile
COPY C:\src\ C:\dst\
RUN dir `
    C:\src
RUN echo ``
COPY --from=my`
org/app:1.0 /x /x
LABEL a=b
