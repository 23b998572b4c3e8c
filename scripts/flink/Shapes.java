package ref;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;

/**
 * Weir's benchmark shapes (crates/weir-bench) on Apache Flink, 10 s checkpoints. Run by
 * scripts/flink-bench.sh: {@code PARALLELISM SHAPE [KEYS]}.
 *
 * <ul>
 *   <li>{@code reference}: counter source -> "w" + (i % 1000) -> keyBy(w -> w) -> count in
 *       ValueState<Long> (1000 String keys);
 *   <li>{@code large-state KEYS}: counter source -> i % KEYS -> keyBy -> count in ValueState<Long>.
 * </ul>
 */
public class Shapes {
    public static void main(String[] args) throws Exception {
        final int parallelism = Integer.parseInt(args[0]);
        final String shape = args[1];
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(parallelism);
        env.enableCheckpointing(10_000);
        DataStream<Long> source = env.fromSequence(0, Long.MAX_VALUE).uid("source");
        DataStream<Long> counts;
        if (shape.equals("reference")) {
            counts = source.map(i -> "w" + (i % 1000)).uid("word").returns(Types.STRING)
                .keyBy(w -> w)
                .process(new Count<String>()).uid("count").returns(Types.LONG);
        } else if (shape.equals("large-state")) {
            final long keys = Long.parseLong(args[2]);
            counts = source.map(i -> i % keys).uid("key").returns(Types.LONG)
                .keyBy(k -> k)
                .process(new Count<Long>()).uid("count").returns(Types.LONG);
        } else {
            throw new IllegalArgumentException("unknown shape " + shape + ": reference or large-state");
        }
        counts.sinkTo(new DiscardingSink<>()).uid("sink");
        env.execute(String.join("-", args));
    }

    public static class Count<K> extends KeyedProcessFunction<K, K, Long> {
        private transient ValueState<Long> count;
        @Override public void open(OpenContext ctx) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
        }
        @Override public void processElement(K key, Context ctx, Collector<Long> out) throws Exception {
            Long c = count.value();
            c = c == null ? 1L : c + 1;
            count.update(c);
            out.collect(c);
        }
    }
}
