package ref;

import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;

/**
 * Weir's large-state benchmark shape on Apache Flink: counter source -> i % keys -> keyBy -> count
 * in ValueState<Long>, p=1, 10 s checkpoints. Run by scripts/flink-large-state.sh.
 */
public class LargeState {
    public static void main(String[] args) throws Exception {
        final long keys = Long.parseLong(args[0]);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(1);
        env.enableCheckpointing(10_000);
        env.fromSequence(0, Long.MAX_VALUE).uid("source")
            .map(i -> i % keys).uid("key")
            .keyBy(k -> k)
            .process(new Count()).uid("count")
            .sinkTo(new DiscardingSink<>()).uid("sink");
        env.execute("large-state-" + keys);
    }

    public static class Count extends KeyedProcessFunction<Long, Long, Long> {
        private transient ValueState<Long> count;
        @Override public void open(OpenContext ctx) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
        }
        @Override public void processElement(Long k, Context ctx, Collector<Long> out) throws Exception {
            Long c = count.value();
            c = c == null ? 1L : c + 1;
            count.update(c);
            out.collect(c);
        }
    }
}
