# syntax=docker/dockerfile:1
FROM myorg/base
RUN <<EOF
FROM myorg/app:1.0
echo hi
EOF
RUN <<-"END" bash
	COPY --from=compile / /
	END
COPY <<EOF /etc/conf
x
EOF
COPY --from=compile /bin/tool /bin/
RUN cat <<A <<B
a
A
b
B
RUN echo "<<NOT" done
